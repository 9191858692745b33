"""Class names: the labels a model's class ids stand for, and name -> id lookup with "did you mean" suggestions.

* A 1,000-class model gets the ImageNet-1k class names, in class-id order (``server/data/imagenet_classes.txt``: the
  public list as torchvision ships it, written once into this package so nothing private is imported at run time).
* The 10-class MNIST demo gets the digit names ``zero`` .. ``nine``. (Not ``"0"`` .. ``"9"``: the JSON string
  ``"7"`` stays a 422 for a class id, case B12, rather than quietly meaning class 7.)
* Any other class count has no names; ids only.

Names match case-insensitively with surrounding blanks ignored. An unknown name is a 422 whose message lists the
closest names (``difflib.get_close_matches``, ratio >= 0.6), so ``"tabby"`` suggests ``tabby cat``.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_IMAGENET_FILE = Path(__file__).with_name("data") / "imagenet_classes.txt"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index = class id."""
    names = tuple(line.strip() for line in _IMAGENET_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(names) == 1000, f"{_IMAGENET_FILE} has {len(names)} names, expected 1000"
    return names


def labels_for(num_classes: int | None) -> tuple[str, ...] | None:
    """The class names of a model with ``num_classes`` classes, or None when it has none (see module docstring)."""
    if num_classes == 1000:
        return imagenet_classes()
    if num_classes == 10:
        return DIGITS
    return None


@lru_cache(maxsize=4)
def _index(labels: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, name in enumerate(labels):
        out.setdefault(name.strip().lower(), i)
    return out


class UnknownClassName(ValueError):
    """A class name the model does not have. ``suggestions``: the closest names (maybe none)."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = f"; closest: {', '.join(repr(s) for s in suggestions)}" if suggestions else ""
        super().__init__(f"unknown class name{hint}")
        self.suggestions = suggestions


def class_id(name: str, labels: tuple[str, ...]) -> int:
    """The class id of ``name`` in ``labels``.

    Raises:
        UnknownClassName: no class has that name (with up to 3 close names as suggestions).
    """
    index = _index(labels)
    key = name.strip().lower()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.6)
    if not close:  # "tabby" is far from "tabby cat" by ratio: also offer names that contain the text
        close = [k for k in index if key and key in k][:3]
    return_names = [labels[index[k]] for k in close]
    raise UnknownClassName(name, return_names)
