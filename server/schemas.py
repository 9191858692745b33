"""HTTP request and response models (pydantic), validated against one :class:`server.limits.Limits`.

Integers and numbers are strict: ``"7"``, ``7.0`` or ``true`` for an integer field is a 422, never coerced, so a
client bug cannot silently pick class 7 (case B12). Every channel (JSON body, multipart form, query string) feeds the
same models through :func:`validate` (``server.parsing`` turns text fields into JSON values first), so a value is
accepted or refused the same way whichever way it came. Ranges that depend on the configuration or the loaded model
(class labels, ``max_steps``, ``max_images``) are checked here too, from the ``limits`` passed as validation context,
with pydantic's own wording; nothing rewrites the messages afterwards.

Seeds: a request carries one ``seed`` (random in 0..2**53 - 1 when omitted, and always echoed back). Image ``i`` of
the request starts from ``svg.sampling.initial_noise(seed, i, shape)`` (Philox key ``(seed, i)``); the noise depends
only on ``(seed, i)``, never on batch size or batch mates (cases B10, B33). ``seed_a``/``seed_b`` of
``/interpolate`` are image index 0 of those seeds, so an end point equals ``/generate`` with that seed.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag,
                      ValidationError, ValidationInfo, field_validator)
from pydantic_core import PydanticCustomError

from server.config import DEFAULT_NUM_POINTS, DEFAULT_STEPS
from server.labels import UnknownClassName, class_id as class_id_of
from server.limits import MAX_TIMESTEP_SHIFT, Limits
from svg.sampling import MAX_GUIDANCE_SCALE, SEED_MAX

# A 64x64 mid-grey PNG: the documented examples carry a real image so that each can be sent as it stands.
EXAMPLE_PNG_BASE64 = ("iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAATUlEQVR42u3PQQ0AAAgEIDX5RTeFDzdoQCepz6aeExAQ"
                      "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQELi3oiwCAJt186UAAAAASUVORK5CYII=")


def _limits(info: ValidationInfo) -> Limits | None:
    return (info.context or {}).get("limits")


def _too_big(value: int | float, bound: int | float, what: str = "") -> PydanticCustomError:
    return PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}" + what,
                               {"le": bound})


def _class_in_model(value: int, info: ValidationInfo) -> int:
    limits = _limits(info)
    if limits is not None and limits.max_class is not None and value > limits.max_class:
        raise _too_big(value, limits.max_class, f" (this model has {limits.num_classes} classes)")
    return value


def _class_name(value: Any, info: ValidationInfo) -> Any:
    """A class name (``server.labels``) becomes its id; an unknown name is a 422 suggesting the closest names."""
    limits = _limits(info)
    if not isinstance(value, str) or limits is None or limits.labels is None:
        return value  # not a name (or a model without names): the strict integer check answers
    try:
        return class_id_of(value, limits.labels)
    except UnknownClassName as exc:
        raise PydanticCustomError("unknown_class_name", str(exc)) from None


SInt = Annotated[int, Strict()]
SFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
ClassId = Annotated[int, Strict(), Field(ge=0), BeforeValidator(_class_name), AfterValidator(_class_in_model)]
# One class for every image, or one per image. The discriminator picks the branch from the JSON type, so a bad
# value gets the error of the branch it meant (never a pair of errors, one per union branch).
ClassIds = Annotated[
    Annotated[ClassId, Tag("one")] | Annotated[list[ClassId], Tag("per_image")],
    Discriminator(lambda v: "per_image" if isinstance(v, list) else "one"),
]
DISCRIMINATOR_TAGS = ("one", "per_image")  # not field names: left out of a 422's dotted field


class Sampler(str, Enum):
    """ODE solver: Euler (1 network evaluation per step) or Heun (2 per step, the last included)."""

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
    """Which part of the mask is regenerated: ``inside`` the selected area, or ``outside`` it."""

    inside = "inside"
    outside = "outside"


class FeatureFormat(str, Enum):
    """Encoding of ``/encode`` output: NumPy ``.npy``, safetensors (tensor ``features``) or JSON lists."""

    npy = "npy"
    safetensors = "safetensors"
    json = "json"


def _strict_model(examples: list[dict] | None = None) -> ConfigDict:
    extra = {"examples": examples} if examples else None
    return ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=extra)


class _Sampling(BaseModel):
    """Fields shared by every request that samples."""

    model_config = _strict_model()

    steps: SInt = Field(DEFAULT_STEPS, ge=1, description="sampling steps, 1..max_steps (GET /models states the "
                        "server's max). Network evaluations per image: steps (Euler) or 2·steps (Heun), "
                        "doubled when guided")
    cfg: SFloat = Field(4.0, ge=0.0, le=MAX_GUIDANCE_SCALE,
                        description="guidance scale w, v = v_u + w·(v_c − v_u); exactly 1 = no guidance (one "
                                    "network row per evaluation); any other value, 0 and 0.5 included, runs "
                                    "guided (two rows)")
    guidance_mode: GuidanceModeName = Field(GuidanceModeName.constant, description="guidance schedule")
    timestep_shift: SFloat = Field(0.15, ge=0.0, le=MAX_TIMESTEP_SHIFT,
                                   description="shift s of the time grid, t' = s·t / (1 + (s−1)·t); 0 = none")
    sampler: Sampler = Field(Sampler.euler, description="ODE solver")

    @field_validator("steps")
    @classmethod
    def _steps_in_config(cls, value: int, info: ValidationInfo) -> int:
        limits = _limits(info)
        if limits is not None and value > limits.max_steps:
            raise _too_big(value, limits.max_steps, " (the server's max_steps)")
        return value


def _count_in_config(count: int, info: ValidationInfo) -> None:
    limits = _limits(info)
    if limits is not None and count > limits.max_images:
        raise PydanticCustomError("too_many_images", "{count} images is more than max_images={max_images}",
                                  {"count": count, "max_images": limits.max_images})


class GenerateRequest(_Sampling):
    """``POST /generate``: class-conditional images."""

    model_config = _strict_model([
        {"class_id": 7, "num_images": 1, "steps": 25, "cfg": 4.0, "guidance_mode": "constant",
         "timestep_shift": 0.15, "sampler": "euler", "seed": 0},
        {"class_id": [1, 2, 3], "steps": 10, "cfg": 1.0, "seed": 42},
    ])

    class_id: ClassIds = Field(
        description="class label 0..num_classes-1 (GET /models; 0..9 for the MNIST demo, 0..999 for an ImageNet "
                    "model), or a list with one label per image")
    num_images: SInt | None = Field(None, ge=1, description="images to make, 1..max_images (default: 1, or "
                                    "len(class_id)); must equal len(class_id) when class_id is a list")
    seed: Seed | None = Field(None, description="request seed 0..2**63-1; image i starts from "
                              "initial_noise(seed, i). Random in 0..2**53-1 when omitted (so that JavaScript "
                              "numbers hold it exactly), and returned in the response")

    @field_validator("class_id")
    @classmethod
    def _class_count(cls, value, info: ValidationInfo):
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("too_short", "List should have at least 1 item, not 0")
            _count_in_config(len(value), info)
        return value

    @field_validator("num_images")
    @classmethod
    def _num_images(cls, value: int | None, info: ValidationInfo):
        if value is None:
            return value
        labels = info.data.get("class_id")
        if isinstance(labels, list) and value != len(labels):
            raise PydanticCustomError("count_mismatch", "differs from len(class_id)={n}", {"n": len(labels)})
        _count_in_config(value, info)
        return value

    def class_ids(self) -> list[int]:
        """One class per image."""
        if isinstance(self.class_id, list):
            return list(self.class_id)
        return [self.class_id] * (self.num_images or 1)


class InterpolateRequest(_Sampling):
    """``POST /interpolate``: images along a path between the initial noises of ``seed_a`` and ``seed_b``. The
    points are ``num_points`` evenly spaced ratios or the explicit ratios ``t``: give one of them, not both
    (neither: 5 points)."""

    model_config = _strict_model([
        {"class_id": 7, "seed_a": 1, "seed_b": 2, "num_points": 5, "mode": "slerp", "steps": 25, "cfg": 4.0},
        {"class_id": 8, "seed_a": 7, "seed_b": 7, "t": [0, 0.5, 1], "mode": "slerp"},
    ])

    class_id: ClassId = Field(description="class label 0..num_classes-1 (GET /models) for every point")
    seed_a: Seed = Field(description="seed of the t=0 end point (image 0 of that seed)")
    seed_b: Seed = Field(description="seed of the t=1 end point (image 0 of that seed)")
    num_points: SInt | None = Field(None, ge=2, description=f"evenly spaced points including both ends, "
                                    f"2..max_images (default {DEFAULT_NUM_POINTS}); give num_points or t, not both")
    t: list[Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, description="explicit mixing ratios in [0, 1], 1..max_images of them, instead of "
                                        "num_points; give num_points or t, not both")
    mode: InterpMode = Field(InterpMode.slerp, description="lerp or slerp of the initial noise")

    @field_validator("num_points")
    @classmethod
    def _points(cls, value: int | None, info: ValidationInfo):
        if value is not None:
            _count_in_config(value, info)
        return value

    @field_validator("t")
    @classmethod
    def _ratios(cls, value: list[float] | None, info: ValidationInfo):
        if value is None:
            return value
        if info.data.get("num_points") is not None:
            raise PydanticCustomError("both_given", "given together with num_points; give num_points or t, "
                                                    "not both")
        _count_in_config(len(value), info)
        return value

    def ratios(self) -> list[float]:
        """The mixing ratios, in request order (default 5 evenly spaced points)."""
        if self.t is not None:
            return list(self.t)
        n = self.num_points or DEFAULT_NUM_POINTS
        return [i / (n - 1) for i in range(n)]


class EditParams(_Sampling):
    """``POST /edit`` parameters (the image and mask travel as files, base64 or the raw body next to these)."""

    model_config = _strict_model([
        {"class_id": 5, "strength": 0.6, "steps": 25, "cfg": 4.0, "region": "inside", "box": [16, 16, 48, 48],
         "seed": 0},
    ])

    class_id: ClassId = Field(description="target class label 0..num_classes-1 (GET /models)")
    strength: SFloat = Field(0.6, ge=0.0, le=1.0, description="fraction of the time grid re-run (SDEdit); "
                             "0 returns the reconstruction, 1 starts from pure noise. Steps run = ceil(steps·s)")
    region: EditRegion = Field(EditRegion.inside, description="regenerate inside or outside the mask")
    box: list[SInt] | None = Field(None, min_length=4, max_length=4,
                                   description="[x0, y0, x1, y1] mask box in input pixels (instead of a mask)")
    seed: Seed | None = Field(None, description="seed of the edit noise 0..2**63-1 (random in 0..2**53-1 when "
                                                "omitted)")


class EditJSON(EditParams):
    """JSON form of ``POST /edit``: base64 image and optional base64 mask."""

    model_config = _strict_model([
        {"image": EXAMPLE_PNG_BASE64, "class_id": 5, "strength": 0.6, "steps": 25, "cfg": 4.0, "region": "inside",
         "box": [16, 16, 48, 48], "seed": 0},
    ])
    image: str = Field(description="base64 image (a data: URL is accepted)")
    mask: str | None = Field(None, description="base64 mask image of the image's aspect ratio: any non-zero pixel "
                                               "is selected, transparent is not; or use box")


class ReconstructParams(BaseModel):
    """Multipart / query fields of ``POST /reconstruct``: none (the image is the file part ``image``)."""

    model_config = _strict_model()


class ReconstructJSON(ReconstructParams):
    """JSON form of ``POST /reconstruct``."""

    model_config = _strict_model([{"image": EXAMPLE_PNG_BASE64}])
    image: str = Field(description="base64 image (a data: URL is accepted)")


class EncodeParams(ReconstructParams):
    """Multipart / query fields of ``POST /encode`` (the image is the file part ``image``)."""

    format: FeatureFormat = Field(FeatureFormat.npy, description="/encode output format")


class ImageJSON(EncodeParams):
    """JSON form of ``POST /encode``."""

    model_config = _strict_model([{"image": EXAMPLE_PNG_BASE64, "format": "json"}])
    image: str = Field(description="base64 image (a data: URL is accepted)")


class ImageOut(BaseModel):
    """One returned image with what produced it."""

    png_base64: str = Field(description="PNG, base64")
    seed: int | None = Field(None, description="the request seed; the noise of image i is "
                             "initial_noise(seed, i) (None for /reconstruct)")
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
    nfe: int = Field(0, description="NFE: network evaluations per image (a guided step counts 2, Heun's "
                                    "corrector again); 0 when nothing was sampled")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    params: dict[str, Any] = Field(default_factory=dict, description="the validated request parameters")


class ErrorResponse(BaseModel):
    """Every non-2xx answer."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": "validation_error", "request_id": "3f2a…",
        "detail": [{"field": "class_id", "value": 1000, "allowed": "an integer 0..9, or a list of 1..16 of them",
                    "msg": "class_id=1000: Input should be less than or equal to 9 (this model has 10 classes)"}]}]})
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
    labels: list[str] | None = Field(None, description="class names, index = class id (ImageNet-1k names for a "
                                     "1,000-class model, zero..nine for the MNIST demo); accepted wherever a "
                                     "class id is")
    random_weights: bool = Field(description="true for the tiny random test checkpoint (not a trained model)")
    max_steps: int = Field(description="largest steps a request may ask for")
    max_images: int = Field(description="largest image count per request")


# -- validation and its 422 entries -------------------------------------------------------------------------------
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


def validation_detail(field: str, value: Any, msg: str, allowed: str) -> dict[str, Any]:
    """One 422 entry naming the field, the value (JSON-safe, see :func:`json_safe`) and the allowed range.

    ``msg`` reads ``field=value: why`` (``field: why`` without a value, and just ``why`` for the whole body)."""
    if isinstance(value, str) and len(value) > 200:
        value = f"<{len(value)} bytes>"
    value = json_safe(value)
    shown = value if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity") else repr(value)
    if value is None:
        text = msg if field == "body" else f"{field}: {msg}"
    else:
        text = f"{field}={shown}: {msg}"
    return {"field": field, "value": value, "allowed": allowed, "msg": text}


class InvalidFields(ValueError):
    """A request that does not validate (HTTP 422); ``detail`` is a list of :func:`validation_detail` entries."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(d["msg"] for d in detail))
        self.detail = detail


def invalid(field: str, value: Any, msg: str, allowed: str) -> InvalidFields:
    """A one-entry :class:`InvalidFields`."""
    return InvalidFields([validation_detail(field, value, msg, allowed)])


def validate(model: type[BaseModel], data: Any, limits: Limits) -> BaseModel:
    """Validate ``data`` (JSON values, whatever channel they came from) as ``model`` within ``limits``.

    Raises:
        InvalidFields: one entry per invalid field, naming the field, the value, the allowed range and pydantic's
            own message; an unknown field's ``allowed`` lists the fields of ``model``.
    """
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise InvalidFields(_details(model, exc, limits)) from None


def _details(model: type[BaseModel], exc: ValidationError, limits: Limits) -> list[dict[str, Any]]:
    detail, seen = [], set()
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"] if p not in DISCRIMINATOR_TAGS) or "body"
        if field in seen:
            continue
        seen.add(field)
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            allowed = "not a field of this request; fields: " + ", ".join(model.model_fields)
        else:
            allowed = limits.allowed(field)
        if err["type"] == "missing":
            value = None  # pydantic quotes the whole object here
        elif isinstance(value, dict):
            value = "<object>"
        detail.append(validation_detail(field, value, err["msg"], allowed))
    return detail
