"""HTTP request and response models (pydantic), with examples for the OpenAPI document.

Integers and numbers are strict: ``"7"``, ``7.0`` or ``true`` for an integer field is a 422, never coerced, so a
client bug cannot silently pick class 7 (case B12). Limits that depend on the server configuration (``max_images``,
``max_steps``) are checked by :func:`check_limits`, which raises the same 422 shape.

Seeds: a request carries one ``seed`` (random when omitted, and always echoed back). Image ``i`` of the request
starts from the noise of ``svg.sampling.initial_noise(seed, i, shape)``, i.e. from its own generator seeded with
``svg.sampling.derive_seed(seed, i)``; the noise depends only on ``(seed, i)``, never on batch size or batch mates
(cases B10, B33). ``seed_a``/``seed_b`` of ``/interpolate`` are used as image index 0 of those seeds, so an end point
equals ``/generate`` with that seed.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from server.config import DEFAULT_STEPS

NUM_CLASSES = 1000  # ImageNet-1k; label 1000 is the null class, internal to guidance only (never accepted here)
MAX_SEED = 2**63 - 1

SInt = Annotated[int, Strict()]
SFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
ClassId = Annotated[int, Strict(), Field(ge=0, le=NUM_CLASSES - 1)]

# Allowed range per field, quoted in every 422 message (keys are field names).
ALLOWED: dict[str, str] = {
    "class_id": "an integer 0..999 or a non-empty list of them",
    "num_images": "an integer 1..max_images",
    "steps": "an integer 1..max_steps",
    "cfg": "a number 0..50 (1 = no guidance)",
    "guidance_mode": "constant | cfg_star",
    "timestep_shift": "a number 0..10 (0 = no shift)",
    "sampler": "euler | heun",
    "seed": f"an integer 0..{MAX_SEED}, or null for a random seed",
    "seed_a": f"an integer 0..{MAX_SEED}",
    "seed_b": f"an integer 0..{MAX_SEED}",
    "num_points": "an integer 2..max_images",
    "t": "a list of 1..max_images numbers in [0, 1]",
    "mode": "lerp | slerp",
    "strength": "a number 0..1 (0 = reconstruction, 1 = from pure noise)",
    "region": "inside | outside",
    "box": "[x0, y0, x1, y1] in input pixels with 0 <= x0 < x1, 0 <= y0 < y1",
    "format": "npy | safetensors | json",
    "image": "a PNG/JPEG/WebP/... image, base64 in JSON or a multipart file",
    "mask": "a mask image (white = edit) or omitted when box is given",
}


class Sampler(str, Enum):
    """ODE solver: Euler (1 NFE per step) or Heun (2 NFE per step except the last)."""

    euler = "euler"
    heun = "heun"


class GuidanceModeName(str, Enum):
    """Guidance schedule. ``constant``: v = v_u + w·(v_c − v_u) every step. ``cfg_star``: the first step's
    velocity is zero (CFG-Zero*-style zero-init, the reference's ``cfg_star-1-0``), then constant."""

    constant = "constant"
    cfg_star = "cfg_star"


class InterpMode(str, Enum):
    """How the two initial noises are mixed: linear, or spherical (falls back to lerp at angle ≈ 0)."""

    lerp = "lerp"
    slerp = "slerp"


class EditRegion(str, Enum):
    """Which part of the mask is regenerated: ``inside`` the white area, or ``outside`` it."""

    inside = "inside"
    outside = "outside"


class FeatureFormat(str, Enum):
    """Encoding of ``/encode`` output: NumPy ``.npy``, safetensors (tensor ``features``) or JSON lists."""

    npy = "npy"
    safetensors = "safetensors"
    json = "json"


class _Sampling(BaseModel):
    """Fields shared by every request that samples."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: SInt = Field(DEFAULT_STEPS, ge=1,
                        description="sampling steps (model evaluations per image: steps for Euler)")
    cfg: SFloat = Field(4.0, ge=0.0, le=50.0, description="guidance scale w; w <= 1 runs without guidance")
    guidance_mode: GuidanceModeName = Field(GuidanceModeName.constant, description="guidance schedule")
    timestep_shift: SFloat = Field(0.15, ge=0.0, le=10.0,
                                   description="shift s of the time grid, t' = s·t / (1 + (s−1)·t); 0 = none")
    sampler: Sampler = Field(Sampler.euler, description="ODE solver")


class GenerateRequest(_Sampling):
    """``POST /generate``: class-conditional images."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [
        {"class_id": 7, "num_images": 1, "steps": 25, "cfg": 4.0, "guidance_mode": "constant",
         "timestep_shift": 0.15, "sampler": "euler", "seed": 0},
        {"class_id": [1, 2, 3], "steps": 10, "cfg": 1.0, "seed": 42},
    ]})

    class_id: ClassId | list[ClassId] = Field(
        description="class label 0..num_classes-1 (GET /models; 0..9 for the MNIST demo, 0..999 for an ImageNet "
                    "model), or one per image")
    num_images: SInt | None = Field(None, ge=1, description="images to make (default: 1, or len(class_id))")
    seed: SInt | None = Field(None, ge=0, le=MAX_SEED, description="request seed; image i uses "
                              "derive_seed(seed, i). Random when omitted (returned in the response)")

    @field_validator("class_id")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("class_id list is empty")
        return v

    def class_ids(self) -> list[int]:
        """One class per image."""
        if isinstance(self.class_id, list):
            return list(self.class_id)
        return [self.class_id] * (self.num_images or 1)


class InterpolateRequest(_Sampling):
    """``POST /interpolate``: images along a path between the initial noises of ``seed_a`` and ``seed_b``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [
        {"class_id": 7, "seed_a": 1, "seed_b": 2, "num_points": 5, "mode": "slerp", "steps": 25, "cfg": 4.0},
        {"class_id": 8, "seed_a": 7, "seed_b": 7, "t": [0, 0.5, 1], "mode": "slerp"},
    ]})

    class_id: ClassId = Field(description="class label 0..num_classes-1 (GET /models) for every point")
    seed_a: SInt = Field(ge=0, le=MAX_SEED, description="seed of the t=0 end point")
    seed_b: SInt = Field(ge=0, le=MAX_SEED, description="seed of the t=1 end point")
    num_points: SInt | None = Field(None, ge=2, description="evenly spaced points including both ends")
    t: list[Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, description="explicit mixing ratios in [0, 1] (instead of num_points)")
    mode: InterpMode = Field(InterpMode.slerp, description="lerp or slerp of the initial noise")

    def ratios(self) -> list[float]:
        """The mixing ratios, in request order (default 5 evenly spaced points)."""
        if self.t is not None:
            return list(self.t)
        n = self.num_points or 5
        return [i / (n - 1) for i in range(n)]


class EditParams(_Sampling):
    """``POST /edit`` parameters (the image and mask travel as files or base64 next to these)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [
        {"class_id": 5, "strength": 0.6, "steps": 25, "cfg": 4.0, "region": "inside", "box": [64, 64, 192, 192],
         "seed": 0},
    ]})

    class_id: ClassId = Field(description="target class label 0..num_classes-1 (GET /models)")
    strength: SFloat = Field(0.6, ge=0.0, le=1.0, description="fraction of the time grid re-run (SDEdit); "
                             "0 returns the reconstruction, 1 starts from pure noise. Steps run = ceil(steps·s)")
    region: EditRegion = Field(EditRegion.inside, description="regenerate inside or outside the mask")
    box: list[SInt] | None = Field(None, min_length=4, max_length=4, description="[x0, y0, x1, y1] mask box")
    seed: SInt | None = Field(None, ge=0, le=MAX_SEED, description="seed of the edit noise")


class EditJSON(EditParams):
    """JSON form of ``POST /edit``: base64 image and optional base64 mask."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    image: str = Field(description="base64 image")
    mask: str | None = Field(None, description="base64 mask image (white = region), or use box")


class ReconstructParams(BaseModel):
    """Multipart / query fields of ``POST /reconstruct``: none (the image is the file part ``image``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ReconstructJSON(ReconstructParams):
    """JSON form of ``POST /reconstruct``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{
        "image": "<base64 PNG>"}]})
    image: str = Field(description="base64 image")


class EncodeParams(ReconstructParams):
    """Multipart / query fields of ``POST /encode`` (the image is the file part ``image``)."""

    format: FeatureFormat = Field(FeatureFormat.npy, description="/encode output format")


class ImageJSON(EncodeParams):
    """JSON form of ``POST /encode``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{
        "image": "<base64 PNG>", "format": "json"}]})
    image: str = Field(description="base64 image")


class ImageOut(BaseModel):
    """One returned image with what produced it."""

    png_base64: str = Field(description="PNG, base64")
    seed: int | None = Field(None, description="the request seed; the noise of image i came from "
                             "derive_seed(seed, i) (None for /reconstruct)")
    index: int = Field(description="image index i within the request")
    class_id: int | None = Field(None, description="class used (generate/edit/interpolate)")
    t: float | None = Field(None, description="interpolation ratio, /interpolate only")


class ImagesResponse(BaseModel):
    """JSON answer of the image endpoints (``Accept: image/png`` gets raw PNG bytes instead)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "3f2a…", "images": [{"png_base64": "iVBOR…", "seed": 0, "index": 0, "class_id": 7}],
        "seed": 0, "steps": 25, "nfe": 50, "timings": {"queue_s": 0.01, "sampling_s": 1.2, "decode_s": 0.05,
                                                       "total_s": 1.3}}]})
    request_id: str
    images: list[ImageOut]
    seed: int | None = None
    steps: int | None = None
    nfe: int = Field(0, description="model rows evaluated for this request (guided rows count twice)")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    params: dict[str, Any] = Field(default_factory=dict, description="the validated request parameters")


class ErrorResponse(BaseModel):
    """Every non-2xx answer."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": "validation_error", "request_id": "3f2a…",
        "detail": [{"field": "class_id", "value": 1000, "allowed": ALLOWED["class_id"],
                    "msg": "class_id=1000: Input should be less than or equal to 999"}]}]})
    error: str
    request_id: str
    detail: Any = None


class ModelsResponse(BaseModel):
    """``GET /models``."""

    preset: str | None
    model_dir: str | None
    checkpoints: dict[str, str] = Field(description="file name -> sha256")
    dtype: str
    sit_engine: str
    decoder_engine: str
    device: str
    latent_shape: list[int] = Field(description="(C, h, w) of one latent")
    image_size: int
    num_classes: int = Field(description="class labels this model accepts: 0..num_classes-1")
    random_weights: bool = Field(description="true for the tiny random test checkpoint (not a trained model)")


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` made JSON-serialisable for an error body: NaN/±inf become ``"NaN"``/``"Infinity"``/``"-Infinity"``,
    bytes become ``"<n bytes>"``, huge integers become strings, anything else unknown becomes its ``repr``.
    Never raises, so building an error response cannot fail on the client's own input."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1023:
            return str(value)
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if depth < 4 and isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:16]]
    if depth < 4 and isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:16]}
    try:
        return repr(value)[:200]
    except Exception:  # a hostile __repr__ must not turn a 422 into a 500
        return "<unprintable>"


def validation_detail(field: str, value: Any, msg: str, allowed: str | None = None) -> dict[str, Any]:
    """One 422 entry naming the field, the value (JSON-safe, see :func:`json_safe`) and the allowed range."""
    root = field.split(".")[0]
    if isinstance(value, str) and len(value) > 200:
        value = f"<{len(value)} bytes>"
    value = json_safe(value)
    shown = value if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity") else repr(value)
    return {"field": field, "value": value, "allowed": ALLOWED.get(root, "") if allowed is None else allowed,
            "msg": f"{field}={shown}: {msg}"}


def allowed_text(field: str, *, max_steps: int, max_images: int, num_classes: int | None = None,
                 fields: list[str] | None = None) -> str:
    """The ``allowed`` text of a 422 for ``field`` with this server's limits filled in.

    Args:
        field: dotted field name (its first part is looked up in :data:`ALLOWED`). max_steps/max_images: the server
            configuration's limits. num_classes: the served model's class count (None: not loaded yet).
        fields: the request's field names, quoted for a field that is not one of them.
    """
    root = field.split(".")[0]
    if fields is not None and root not in fields:
        return "not a field of this request; fields: " + ", ".join(fields)
    if root == "class_id" and num_classes is not None:
        return class_allowed(num_classes)
    text = ALLOWED.get(root, "")
    return text.replace("max_steps", str(max_steps)).replace("max_images", str(max_images))


def class_allowed(num_classes: int) -> str:
    """The ``allowed`` text of ``class_id`` for a model with ``num_classes`` class labels."""
    return f"an integer 0..{num_classes - 1} or a non-empty list of them"


class LimitError(ValueError):
    """A configuration-dependent limit was exceeded; ``detail`` is a list of :func:`validation_detail` entries."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(d["msg"] for d in detail))
        self.detail = detail


def check_limits(req: BaseModel, *, max_images: int, max_steps: int) -> None:
    """Check the limits that come from the server configuration.

    Raises:
        LimitError: ``steps`` above ``max_steps``, the image count above ``max_images``, ``num_images`` that
            differs from ``len(class_id)``, or ``num_points`` given together with ``t``.
    """
    errors = []
    if isinstance(req, GenerateRequest) and isinstance(req.class_id, list) and req.num_images is not None \
            and req.num_images != len(req.class_id):
        errors.append(validation_detail("num_images", req.num_images,
                                        f"differs from len(class_id)={len(req.class_id)}",
                                        f"omitted, or equal to len(class_id)={len(req.class_id)}"))
    if isinstance(req, InterpolateRequest) and req.num_points is not None and req.t is not None:
        errors.append(validation_detail("num_points", req.num_points, "given together with t",
                                        "omitted when t is given (give either num_points or t)"))
    steps = getattr(req, "steps", None)
    if steps is not None and steps > max_steps:
        errors.append(validation_detail("steps", steps, f"above max_steps={max_steps}; allowed 1..{max_steps}"))
    count = None
    if isinstance(req, GenerateRequest):
        count, name = len(req.class_ids()), "num_images"
    elif isinstance(req, InterpolateRequest):
        count, name = len(req.ratios()), "num_points" if req.t is None else "t"
    if count is not None and count > max_images:
        errors.append(validation_detail(name, count, f"{count} images above max_images={max_images}; "
                                                     f"allowed 1..{max_images}"))
    if errors:
        raise LimitError(errors)
