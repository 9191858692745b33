"""The server's one configuration: a frozen, validated dataclass filled from CLI flags and ``SVG_*`` variables.

Precedence: command-line flag > environment variable > default. Every field has one flag ``--field-name`` and one
variable ``SVG_FIELD_NAME``; the table is built from the dataclass itself, so the two can never drift apart.

Example::

    cfg = ServerConfig.from_sources(["--max-rows", "16"], env={"SVG_DEVICE": "cpu"})
    cfg.max_rows, cfg.device            # (16, 'cpu')
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

ENGINES = ("eager", "compile", "tensorrt")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_STEPS = 25  # sampling steps of a request that omits ``steps`` (server.schemas)
ENV_PREFIX = "SVG_"


class ConfigError(ValueError):
    """A configuration value outside its allowed range; the message names the field, the value and the range."""


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class ServerConfig:
    """Validated server settings (units in the field names: ``_s`` seconds, ``_bytes`` bytes).

    Raises:
        ConfigError: from ``__post_init__`` when a value is out of range (names field, value, range).
    """

    model_dir: Path = _help("our safetensors checkpoint directory (sit/autoencoder/latent_stats)",
                            default=Path("models/demo"))
    sit_checkpoint: Path | None = _help("released SiT checkpoint file (overrides model_dir, needs preset)",
                                        default=None)
    ae_checkpoint: Path | None = _help("released autoencoder checkpoint file", default=None)
    latent_stats: Path | None = _help("released latent statistics file", default=None)
    preset: str | None = _help("SiT preset name for released checkpoints (e.g. SVG-XL)", default=None)
    device: str = _help("torch device: cpu, cuda, cuda:N or auto (cuda when available)", default="auto")
    dtype: str = _help("compute dtype: float32, bfloat16 or float16", default="float32")
    engine: str | None = _help("shorthand: sets both sit_engine and decoder_engine (eager, compile or tensorrt)",
                               default=None)
    sit_engine: str = _help("SiT engine: eager, compile or tensorrt", default="eager")
    decoder_engine: str = _help("decoder engine: eager, compile or tensorrt", default="eager")
    max_rows: int = _help("model rows per DiT step (guided images count twice), 2..4096", default=32)
    max_queue: int = _help("requests allowed to wait before 429, 1..100000", default=64)
    batch_wait_s: float = _help("longest wait before a partial first batch starts, 0..10 s", default=0.005)
    request_timeout_s: float = _help("per-request deadline, 0.1..600 s (504 after it)", default=300.0)
    max_images: int = _help("images per request (num_images, interpolation points), 1..256", default=16)
    max_steps: int = _help(f"sampling steps per request, {DEFAULT_STEPS}..1000 (not below the request default)",
                           default=250)
    decode_batch: int = _help("latents per decoder call, 1..1024", default=16)
    max_upload_bytes: int = _help("largest request body, bytes, 1 KiB..1 GiB (413 above)", default=20 * 2**20)
    max_upload_pixels: int = _help("largest decoded image, pixels (413 above), 1..80,000,000; below PIL's "
                                   "89,478,485 default", default=40_000_000)
    api_key: str | None = _help("bearer token, at least 8 characters, required on every endpoint except /health, "
                                "/ready, /metrics, /docs, /redoc, /openapi.json (unset: open)",
                                default=None)
    host: str = _help("listen address", default="127.0.0.1")
    port: int = _help("listen port, 0..65535", default=8000)
    workers: int = _help("server processes; must be 1: one process owns the device (case B28)", default=1)
    peak_flops: float = _help("device peak FLOP/s for svg_mfu_ratio (default H200 BF16 dense)", default=989.4e12)
    max_requests_per_step: int = _help("distinct requests sharing one DiT step, 0 = no cap; 1 turns batching off "
                                       "(benchmark baseline)", default=0)
    batch_invariant: bool = _help("a request's bytes do not depend on what it is batched with: the SiT's conditioning "
                                  "path runs at max_rows rows and the decoder never at 1 (a few % at low load)",
                                  default=True)
    warmup: bool = _help("run one tiny request before /ready reports 200", default=True)
    log_level: str = _help("uvicorn log level", default="info")

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is out of range: allowed {allowed}")

        need("engine", self.engine is None or self.engine in ENGINES, " | ".join(ENGINES))
        if self.engine is not None:  # --engine passes through to both engines
            object.__setattr__(self, "sit_engine", self.engine)
            object.__setattr__(self, "decoder_engine", self.engine)
        need("dtype", self.dtype in DTYPES, " | ".join(DTYPES))
        need("sit_engine", self.sit_engine in ENGINES, " | ".join(ENGINES))
        need("decoder_engine", self.decoder_engine in ENGINES, " | ".join(ENGINES))
        dev = self.device
        need("device", dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
             "auto | cpu | cuda | cuda:N")
        need("max_rows", 2 <= self.max_rows <= 4096, "2..4096")
        need("max_queue", 1 <= self.max_queue <= 100_000, "1..100000")
        need("batch_wait_s", 0 <= self.batch_wait_s <= 10, "0..10 seconds")
        need("request_timeout_s", 0.1 <= self.request_timeout_s <= 600, "0.1..600 seconds")
        need("max_images", 1 <= self.max_images <= 256, "1..256")
        need("max_steps", 1 <= self.max_steps <= 1000, "1..1000")
        # A request that omits steps runs DEFAULT_STEPS; a smaller max would 422 every such request, so refuse.
        need("max_steps", self.max_steps >= DEFAULT_STEPS,
             f"{DEFAULT_STEPS}..1000 (at least the request default steps={DEFAULT_STEPS})")
        need("max_requests_per_step", 0 <= self.max_requests_per_step <= 4096, "0..4096 (0 = no cap)")
        need("decode_batch", 1 <= self.decode_batch <= 1024, "1..1024")
        need("max_upload_bytes", 1024 <= self.max_upload_bytes <= 2**30, "1024..1073741824 bytes")
        need("max_upload_pixels", 1 <= self.max_upload_pixels <= 80_000_000, "1..80000000 pixels")
        need("port", 0 <= self.port <= 65535, "0..65535")
        need("peak_flops", self.peak_flops > 0, "> 0")
        # One process owns the device: several uvicorn workers would each load the weights and keep their own
        # metrics registry, so counters would jump between scrapes (case B28). Refuse rather than silently clamp.
        need("workers", self.workers == 1,
             "1 only: one process owns the device; scale out with more replicas (ops/), not workers")
        if self.sit_checkpoint is not None:
            need("preset", self.preset is not None, "a SiT preset name when sit_checkpoint is given")
        if self.api_key is not None:
            need("api_key", len(self.api_key) >= 8, "at least 8 characters")

    # -- construction from flags and environment ---------------------------------------------------------------------
    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The argparse parser: one ``--flag`` per field, help text with the ``SVG_*`` variable and default."""
        p = argparse.ArgumentParser(prog="svg-serve", description="SVG inference server (FastAPI + uvicorn)")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env = ENV_PREFIX + f.name.upper()
            help_text = f"{f.metadata['help']} [env {env}; default {f.default!r}]"
            if f.type in ("bool", bool):
                p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            else:
                p.add_argument(flag, dest=f.name, default=None, help=help_text)
        return p

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> "ServerConfig":
        """Build from CLI ``argv`` (``None``: no flags) and ``env`` (``None``: ``os.environ``).

        Raises:
            ConfigError: a value that does not parse or is out of range (names the field and the value).
        """
        env = os.environ if env is None else env
        ns = cls.parser().parse_args(list(argv or []))
        values = {}
        for f in fields(cls):
            raw = getattr(ns, f.name)
            source = f"--{f.name.replace('_', '-')}"
            if raw is None:
                raw = env.get(ENV_PREFIX + f.name.upper())
                source = ENV_PREFIX + f.name.upper()
            if raw is None:
                continue
            values[f.name] = _convert(f, raw, source)
        return cls(**values)

    def replace(self, **changes) -> "ServerConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def resolved_device(self) -> str:
        """``device`` with ``auto`` resolved (imports torch; call it in the worker, not at import)."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _convert(f: dataclasses.Field, raw, source: str):
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            low = text.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return low in ("1", "true", "yes", "on")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if "Path" in kind:
            return None if text == "" else Path(text)
        if "None" in kind and text == "":
            return None
        return text
    except ValueError:
        raise ConfigError(f"{f.name}={text!r} (from {source}) is not a valid {kind.split(' ')[0]}") from None
