"""Shared argument checks for the command-line entry points (``python -m svg.X``, ``engines.X``, ``scripts/``).

Every bad argument ends as one ``argparse`` error line (exit status 2) that names the option, the value and the
allowed range, never a Python traceback. The ``*_type`` factories are ``type=`` callables for ``add_argument``;
``existing_file`` checks paths; ``guard`` turns a ``ValueError`` raised by config validation into ``parser.error``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def int_type(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """``type=`` callable: an integer in ``[minimum, maximum]`` (either bound optional).

    Raises:
        argparse.ArgumentTypeError: the text is not an integer or lies outside the range; argparse prefixes the
            option name.
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer{_range(minimum, maximum)}") from None
        _check(value, text, minimum, maximum)
        return value
    return parse


def float_type(minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False) -> Callable[[str], float]:
    """``type=`` callable: a finite float in ``[minimum, maximum]`` (``(minimum, ...`` with ``exclusive_minimum``).

    Raises:
        argparse.ArgumentTypeError: not a finite number, or outside the range.
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number{_range(minimum, maximum)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if exclusive_minimum and minimum is not None and value <= minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be > {minimum}")
        _check(value, text, minimum, maximum)
        return value
    return parse


def int_list_type(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], list[int]]:
    """``type=`` callable: a comma-separated, non-empty list of integers, each in ``[minimum, maximum]``.

    Raises:
        argparse.ArgumentTypeError: empty list, an item that is not an integer, or an item outside the range.
    """
    item = int_type(minimum, maximum)

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers{_range(minimum, maximum)}")
        return [item(p) for p in parts]
    return parse


def choice_list_type(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """``type=`` callable: a comma-separated, non-empty subset of ``allowed`` (order kept).

    Raises:
        argparse.ArgumentTypeError: empty, or an item not in ``allowed`` (the message lists what is allowed).
    """
    def parse(text: str) -> list[str]:
        items = [p.strip() for p in text.split(",") if p.strip()]
        unknown = [p for p in items if p not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"{text!r}: unknown {unknown}; allowed: comma-separated subset of {list(allowed)}")
        return items
    return parse


def existing_file(parser: argparse.ArgumentParser, option: str, path: str | Path, directory: bool = False) -> Path:
    """Return ``Path(path)`` or exit through ``parser.error`` when it is missing (or of the wrong kind)."""
    path = Path(path)
    kind = "directory" if directory else "file"
    if not (path.is_dir() if directory else path.is_file()):
        parser.error(f"argument {option}: {kind} not found: {path}" if not path.exists()
                     else f"argument {option}: not a {kind}: {path}")
    return path


_FIELD = re.compile(r"^(\w+)=")


def _option_for(parser: argparse.ArgumentParser, message: str) -> str | None:
    """The ``--flag`` a message of the form ``field=value ...`` is about, when the parser has that flag."""
    m = _FIELD.match(message)
    if m is None:
        return None
    flag = "--" + m.group(1).replace("_", "-")
    return flag if flag in parser._option_string_actions else None


@contextlib.contextmanager
def guard(parser: argparse.ArgumentParser, option: str | None = None,
          errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> Iterator[None]:
    """Turn ``errors`` raised inside the block (config validation) into one ``parser.error`` line (exit 2).

    The library's message already names the field, the value and the allowed range. The line reads
    ``argument <option>: <message>`` (argparse's own form): ``option`` when given, else the option named by a message
    that starts with ``field=`` (``steps=-5 out of range`` → ``--steps``) when the parser has it, else the message
    alone. Wrap only the set-up phase, so that an error during the real work still shows its traceback.
    """
    try:
        yield
    except errors as exc:
        message = " ".join(str(exc).split())  # one line
        option = option or _option_for(parser, message)
        parser.error(f"argument {option}: {message}" if option else message)


def _range(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _check(value: float, text: str, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        allowed = _range(minimum, maximum).strip().removeprefix("in ")
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: {allowed}")
