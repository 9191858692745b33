"""Load tests for the SVG server: Locust scenarios, load shapes as data, a headless runner with SLO checks.

This package imports nothing from the rest of the repository, so it can be copied to and run from any machine that
has `locust` and `matplotlib` installed. Entry points:

* ``locust -f loadtest/locustfile.py --host URL`` (interactive or ``--headless``),
* ``python -m loadtest.run --url URL --duration 20s --users 4 --shape steady --out DIR`` (headless, SLO exit code).
"""
