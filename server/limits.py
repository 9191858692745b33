"""One :class:`Limits` object: every range a request field may take, from the configuration and the loaded model.

The request models (``server.schemas``) check their limit-dependent fields against it, the OpenAPI document states
its numbers, and the ``allowed`` text of every 422 quotes it; the sampler's own bounds (guidance scale, seed, steps)
are imported from ``svg.sampling``, so no range is written twice.

Example::

    limits = Limits.build(cfg, num_classes=10)
    limits.max_class, limits.allowed("steps")      # (9, 'an integer 1..250')
"""

from __future__ import annotations

from dataclasses import dataclass

from server.config import DEFAULT_NUM_POINTS, DEFAULT_STEPS, ServerConfig
from server.labels import labels_for
from svg.sampling import MAX_GUIDANCE_SCALE, SEED_MAX

# A request without a seed gets one drawn from 0..2**53 - 1: JavaScript numbers are IEEE doubles, which hold every
# integer only up to 2**53, so a larger seed echoed in JSON would be rounded by JSON.parse and replay another image.
RANDOM_SEED_MAX = 2**53 - 1
MAX_TIMESTEP_SHIFT = 10.0  # s = 10 already moves nearly every grid point to t > 0.9; more is a typo


@dataclass(frozen=True)
class Limits:
    """Allowed ranges of the request fields.

    Attributes:
        num_classes: class labels of the loaded model, ``0..num_classes-1`` (None while the model loads: class ranges
            are then checked once it is ready).
        max_steps, max_images: from the configuration (``--max-steps``, ``--max-images``).
        guidance_max: largest guidance scale (``svg.sampling.MAX_GUIDANCE_SCALE``).
        seed_max: largest seed (``svg.sampling.SEED_MAX``, 2**63 - 1). random_seed_max: largest random seed.
        shift_max: largest timestep shift.
        default_steps, default_num_points: what a request that omits ``steps`` / ``num_points`` gets.
        labels: the model's class names (``server.labels.labels_for``), accepted wherever a class id is; or None.
    """

    num_classes: int | None
    max_steps: int
    max_images: int
    guidance_max: float = MAX_GUIDANCE_SCALE
    seed_max: int = SEED_MAX
    random_seed_max: int = RANDOM_SEED_MAX
    shift_max: float = MAX_TIMESTEP_SHIFT
    default_steps: int = DEFAULT_STEPS
    default_num_points: int = DEFAULT_NUM_POINTS
    labels: tuple[str, ...] | None = None

    @classmethod
    def build(cls, cfg: ServerConfig, num_classes: int | None = None) -> "Limits":
        """The limits of a server with configuration ``cfg`` serving a model with ``num_classes`` classes."""
        return cls(num_classes=num_classes, max_steps=cfg.max_steps, max_images=cfg.max_images,
                   labels=labels_for(num_classes))

    @property
    def max_class(self) -> int | None:
        return None if self.num_classes is None else self.num_classes - 1

    def allowed(self, field: str) -> str:
        """The allowed range of ``field`` (a dotted name; its first part is looked up), quoted in every 422."""
        classes = "0..num_classes-1 (GET /models)" if self.num_classes is None else f"0..{self.max_class}"
        if self.labels is not None:
            classes += " or a class name from GET /models (e.g. " + repr(self.labels[min(1, self.max_class)]) + ")"
        texts = {
            "class_id": f"an integer {classes}, or a list of 1..{self.max_images} of them (one per image)",
            "num_images": f"an integer 1..{self.max_images}, equal to len(class_id) when class_id is a list",
            "steps": f"an integer 1..{self.max_steps}",
            "cfg": f"a number 0..{self.guidance_max:g} (1 = no guidance)",
            "guidance_mode": "constant | cfg_star",
            "timestep_shift": f"a number 0..{self.shift_max:g} (0 = no shift)",
            "sampler": "euler | heun",
            "seed": f"an integer 0..{self.seed_max}, or null for a random seed",
            "seed_a": f"an integer 0..{self.seed_max}",
            "seed_b": f"an integer 0..{self.seed_max}",
            "num_points": f"an integer 2..{self.max_images} (give num_points or t, not both)",
            "t": f"a list of 1..{self.max_images} numbers in [0, 1] (give num_points or t, not both)",
            "mode": "lerp | slerp",
            "strength": "a number 0..1 (0 = reconstruction, 1 = from pure noise)",
            "region": "inside | outside",
            "box": "[x0, y0, x1, y1] in input pixels with 0 <= x0 < x1, 0 <= y0 < y1",
            "format": "npy | safetensors | json",
            "image": "a PNG/JPEG/WebP/... image: base64 in JSON, a multipart file, or the raw body",
            "mask": "a mask image of the image's aspect ratio (non-zero = selected), or omitted when box is given",
            "body": "a JSON object",
        }
        return texts.get(field.split(".")[0], "")
