"""Run tests/kernels on a machine that may lack pytest (the GPU box: torch + triton only, no pip installs).

With pytest installed this is ``pytest -m "not slow" tests/kernels``. Without it, a small stand-in ``pytest``
module is registered that covers what the kernel tests use -- ``mark.parametrize`` (stacked, with ids),
``mark.<name>``, ``fixture``, ``raises(match=)``, ``fail``, ``skip`` -- and every ``test_*`` function of
``tests/kernels/test_*.py`` is called with the fixtures ``device``, ``monkeypatch``, ``tmp_path`` and fixtures
defined in the test module itself. Exit status 1 if any test fails.

Usage: ``python scripts/run_kernel_tests.py [--no-pytest] [-k SUBSTRING]`` from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import tempfile
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Skipped(Exception):
    pass


class _Failed(AssertionError):
    pass


class _Mark:
    """``pytest.mark``: ``parametrize`` records argument sets; any other mark records its name."""

    def parametrize(self, names, values, ids=None):
        def deco(fn):
            fn.__dict__.setdefault("_params", []).insert(0, (names, list(values)))
            return fn

        return deco

    def __getattr__(self, name):
        def deco(fn):
            fn.__dict__.setdefault("_marks", set()).add(name)
            return fn

        return deco


def _fixture(fn=None, **_kwargs):
    def deco(f):
        f._is_fixture = True
        return f

    return deco(fn) if fn is not None else deco


@contextlib.contextmanager
def _raises(expected, match=None):
    try:
        yield
    except expected as exc:
        if match is not None and not re.search(match, str(exc)):
            raise _Failed(f"exception message {str(exc)!r} does not match {match!r}") from exc
        return
    raise _Failed(f"did not raise {expected}")


def _stub_pytest() -> types.ModuleType:
    mod = types.ModuleType("pytest")
    mod.mark = _Mark()
    mod.fixture = _fixture
    mod.raises = _raises

    def fail(msg=""):
        raise _Failed(msg)

    def skip(msg=""):
        raise _Skipped(msg)

    mod.fail, mod.skip = fail, skip
    return mod


class _MonkeyPatch:
    def __init__(self):
        self._env: list[tuple[str, str | None]] = []

    def setenv(self, name, value):
        self._env.append((name, os.environ.get(name)))
        os.environ[name] = str(value)

    def delenv(self, name, raising=True):
        self._env.append((name, os.environ.get(name)))
        os.environ.pop(name, None)

    def undo(self):
        for name, old in reversed(self._env):
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _cases(fn):
    """(id, kwargs) for every combination of the stacked parametrize decorators."""
    axes = []
    for names, values in fn.__dict__.get("_params", []):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        axes.append([(f"{i}", dict(zip(names, v if len(names) > 1 else (v,)))) for i, v in enumerate(values)])
    for combo in itertools.product(*axes):
        kwargs = {}
        for _, part in combo:
            kwargs.update(part)
        yield "-".join(i for i, _ in combo), kwargs


def _call(fn, kwargs, module, device) -> None:
    cleanups = []
    try:
        for name in inspect.signature(fn).parameters:
            if name in kwargs:
                continue
            if name == "device":
                kwargs[name] = device
            elif name == "monkeypatch":
                mp = _MonkeyPatch()
                cleanups.append(mp.undo)
                kwargs[name] = mp
            elif name == "tmp_path":
                tmp = tempfile.TemporaryDirectory()
                cleanups.append(tmp.cleanup)
                kwargs[name] = Path(tmp.name)
            elif getattr(getattr(module, name, None), "_is_fixture", False):
                value = getattr(module, name)()
                if inspect.isgenerator(value):
                    gen = value
                    value = next(gen)
                    cleanups.append(lambda gen=gen: next(gen, None))
                kwargs[name] = value
            else:
                raise _Skipped(f"fixture {name!r} not available in the stand-in runner")
        fn(**kwargs)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def run_without_pytest(selector: str) -> int:
    """Run the kernel tests with the stand-in; returns the number of failures."""
    sys.modules.setdefault("pytest", _stub_pytest())
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import kernels

    if kernels.backend_name(device) == "reference":
        print(f"FAIL kernels would run the PyTorch reference on {device} (is {kernels.DISABLE_ENV} set?)")
        return 1
    passed = failed = skipped = 0
    for path in sorted((REPO / "tests" / "kernels").glob("test_*.py")):
        module = importlib.import_module(f"tests.kernels.{path.stem}")
        for name, fn in vars(module).items():
            if not (name.startswith("test_") and callable(fn)) or "slow" in fn.__dict__.get("_marks", set()):
                continue
            for case_id, kwargs in _cases(fn):
                test_id = f"{path.name}::{name}[{case_id}]" if case_id else f"{path.name}::{name}"
                if selector and selector not in test_id:
                    continue
                try:
                    _call(fn, dict(kwargs), module, device)
                    passed += 1
                except _Skipped as exc:
                    skipped += 1
                    print(f"SKIP {test_id}: {exc}")
                except Exception:  # any failure of the test body is reported and counted
                    failed += 1
                    print(f"FAIL {test_id}\n{traceback.format_exc()}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped (stand-in runner, device {device})")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description="Run tests/kernels with pytest, or with a stand-in without it.")
    parser.add_argument("-k", default="", help="only test ids containing this substring (stand-in runner)")
    parser.add_argument("--no-pytest", action="store_true", help="use the stand-in even if pytest is installed")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    if not args.no_pytest and importlib.util.find_spec("pytest") is not None:
        import pytest

        extra = ["-k", args.k] if args.k else []
        sys.exit(pytest.main(["-q", "-m", "not slow", "-p", "no:cacheprovider", "tests/kernels", *extra]))
    sys.exit(1 if run_without_pytest(args.k) else 0)


if __name__ == "__main__":
    main()
