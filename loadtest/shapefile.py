"""The data load shape, as its own Locust file: load it beside the scenarios only when a shape is wanted::

    locust -f loadtest/locustfile.py,loadtest/shapefile.py --headless --shape-name burst --shape-users 16 \
        --shape-duration 5m --host http://127.0.0.1:8000

Locust hands a run to a ``LoadTestShape`` whenever the loaded files define one, and then ignores ``-u``, ``-r`` and
``-t``; kept apart from ``locustfile.py``, a plain ``locust -f loadtest/locustfile.py -u 8 -t 600s`` honours them.
The ``--shape-*`` options are declared in ``locustfile.py``.
"""

from __future__ import annotations

from locust import LoadTestShape

# Locust puts this file's folder on sys.path, so the sibling module imports by its plain name.
from shape_spec import load_shape, parse_duration


class DataShape(LoadTestShape):
    """Load shape from data (``shapes/*.json``), scaled to ``--shape-duration`` and ``--shape-users``.

    Returns None after the duration, which stops the run. Spawn rate equals the peak user count per second, so each
    stage change takes at most about a second.
    """

    def tick(self):
        options = self.runner.environment.parsed_options
        if not hasattr(self, "_shape"):
            self._shape = load_shape(options.shape_name)
            self._duration_s = parse_duration(options.shape_duration)
        users = self._shape.users_at(self.get_run_time(), self._duration_s, options.shape_users)
        if users is None:
            return None
        return users, float(options.shape_users)
