"""The names `kernels` and `engines` also exist on PyPI: make sure ours are the ones imported."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_local_packages_shadow_pypi_names():
    import engines
    import kernels

    for mod in (kernels, engines):
        assert Path(mod.__file__).resolve().is_relative_to(REPO), f"{mod.__name__} resolved to {mod.__file__}"
