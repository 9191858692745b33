"""Command-line plumbing shared by every ``python -m training.X`` entry point: bad arguments become one
``argparse`` error line (exit code 2) naming the argument, the value and the allowed range, never a traceback.

Validation lives where it always did (the stage configs' ``__post_init__``, the preset look-ups, the resume
checks); the entry points run those steps inside :func:`usage_errors` (``svg.cli.guard``), which turns their
``ValueError`` / ``FileNotFoundError`` into ``parser.error(...)``. Only the set-up phase is wrapped, so an error during training
still shows its traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

from svg.cli import existing_file
from svg.cli import guard as usage_errors  # one error path for every CLI of the project

__all__ = ["usage_errors", "check_range", "require_file", "require_data", "require_model_files"]


def check_range(name: str, value: float | int | None, ok: bool, allowed: str) -> None:
    """Raise ``ValueError("name=value out of range; allowed: ...")`` unless ``ok`` (the configs' wording)."""
    if not ok:
        raise ValueError(f"{name}={value} out of range; allowed: {allowed}")


def require_file(parser: argparse.ArgumentParser, flag: str, path: str | Path | None) -> None:
    """``parser.error`` unless ``path`` (when given) is an existing file."""
    if path is not None:
        existing_file(parser, flag, path)


def require_data(parser: argparse.ArgumentParser, data: str | Path, flag: str = "--data") -> None:
    """``parser.error`` unless ``data`` is an existing ``.npz`` file (MNIST) or an ImageFolder directory."""
    path = Path(data)
    if path.suffix == ".npz" and not path.is_file():
        parser.error(f"argument {flag}: MNIST file not found: {path} (pass --data /path/to/mnist.npz)")
    if path.suffix != ".npz" and not path.is_dir():
        parser.error(f"argument {flag}: {path} is neither an .npz file nor an ImageFolder directory")


def require_model_files(parser: argparse.ArgumentParser, model_dir: str | Path, names: Iterable[str],
                        flag: str = "--model-dir") -> None:
    """``parser.error`` naming the first of ``names`` missing from ``model_dir`` and everything the directory
    needs (the wording of ``svg.pipeline.SVGPipeline.from_dir``)."""
    names = list(names)
    needs = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    for name in names:
        if not (Path(model_dir) / name).is_file():
            parser.error(f"argument {flag}: {Path(model_dir) / name} not found; a model directory needs {needs}")
