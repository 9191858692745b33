"""Load shapes as data: a JSON file of stages, scaled to a run's duration and peak user count.

A shape file holds ``{"name", "description", "stages": [{"until": f, "users": u}, ...]}`` where ``until`` is the
end of the stage as a fraction of the run (0 < f <= 1, increasing, the last one exactly 1) and ``users`` the
user count during the stage as a fraction of the peak (0 < u <= 1). The built-in shapes live in ``shapes/``:
``steady``, ``burst`` and ``ramp``. Imports only the standard library (the locustfile loads it beside itself).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"


@dataclass(frozen=True)
class Stage:
    """One stage of a shape: up to ``until`` (fraction of the run) hold ``users`` (fraction of the peak)."""

    until: float
    users: float


@dataclass(frozen=True)
class Shape:
    """A load shape: named stages that cover the whole run.

    Raises:
        ValueError: stages empty, ``until`` not increasing in (0, 1] or not ending at 1, ``users`` not in (0, 1].
    """

    name: str
    stages: tuple[Stage, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"shape {self.name!r}: 'stages' is empty; give at least one stage")
        previous = 0.0
        for i, stage in enumerate(self.stages):
            if not previous < stage.until <= 1.0:
                raise ValueError(
                    f"shape {self.name!r}: stages[{i}].until = {stage.until} must be in ({previous}, 1.0]"
                )
            if not 0.0 < stage.users <= 1.0:
                raise ValueError(f"shape {self.name!r}: stages[{i}].users = {stage.users} must be in (0, 1.0]")
            previous = stage.until
        if self.stages[-1].until != 1.0:
            raise ValueError(f"shape {self.name!r}: the last stage must end at until = 1.0, got {previous}")

    def users_at(self, elapsed_s: float, duration_s: float, peak_users: int) -> int | None:
        """User count at ``elapsed_s`` seconds into a run of ``duration_s`` seconds; None once the run is over.

        The count is ``ceil(users * peak_users)``, at least 1, so a quarter of 2 users is still one user.
        """
        if duration_s <= 0:
            raise ValueError(f"duration_s = {duration_s} must be > 0 seconds")
        if peak_users < 1:
            raise ValueError(f"peak_users = {peak_users} must be >= 1")
        fraction = elapsed_s / duration_s
        if fraction >= 1.0:
            return None
        for stage in self.stages:
            if fraction < stage.until:
                return max(1, math.ceil(stage.users * peak_users - 1e-9))
        return None


_KNOWN_KEYS = {"name", "description", "stages"}
_STAGE_KEYS = {"until", "users"}


def load_shape(name_or_path: str) -> Shape:
    """Load a shape by built-in name (``steady``, ``burst``, ``ramp``) or from a JSON file path.

    Raises:
        ValueError: unknown shape name, unknown keys in the file (named), or invalid stages.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SHAPES_DIR / f"{name_or_path}.json"
        if not path.exists():
            known = sorted(p.stem for p in SHAPES_DIR.glob("*.json"))
            raise ValueError(f"shape = {name_or_path!r} is not a built-in shape; choose one of {known} or a .json path")
    data = json.loads(path.read_text())
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"shape file {path}: unknown keys {sorted(unknown)}; allowed {sorted(_KNOWN_KEYS)}")
    stages = []
    for i, raw in enumerate(data.get("stages", [])):
        unknown = set(raw) - _STAGE_KEYS
        if unknown:
            raise ValueError(f"shape file {path}: stages[{i}] has unknown keys {sorted(unknown)}; allowed {sorted(_STAGE_KEYS)}")
        stages.append(Stage(until=float(raw["until"]), users=float(raw["users"])))
    return Shape(name=data.get("name", path.stem), stages=tuple(stages), description=data.get("description", ""))


def parse_duration(text: str) -> float:
    """Parse a Locust-style duration (``20s``, ``5m``, ``1h30m``, ``90``) into seconds.

    Raises:
        ValueError: empty, unknown unit or not positive.
    """
    text = text.strip().lower()
    if not text:
        raise ValueError("duration is empty; use e.g. '20s', '5m' or '1h30m'")
    if text.replace(".", "", 1).isdigit():
        seconds = float(text)
    else:
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds, number = 0.0, ""
        for char in text:
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                seconds += float(number) * units[char]
                number = ""
            else:
                raise ValueError(f"duration = {text!r} is not understood; use e.g. '20s', '5m' or '1h30m'")
        if number:
            raise ValueError(f"duration = {text!r} has a number without a unit (h, m or s)")
    if seconds <= 0:
        raise ValueError(f"duration = {text!r} must be > 0 seconds")
    return seconds
