"""Every directory the server will write, checked at start-up (case T31: an unwritable cache made the server stay up
unready, answering 503 with an OSError, until a health check gave up an hour later).

What a configuration writes:

* ``compile`` engines: inductor's cache (``TORCHINDUCTOR_CACHE_DIR``, default ``<tmp>/torchinductor_<user>``) and,
  on CUDA, Triton's (``TRITON_CACHE_DIR``, default ``<inductor cache>/triton``);
* ``tensorrt`` engines: the plan cache (``SVG_ENGINE_CACHE``, :func:`engines.cache.engine_cache_dir`);
* on CUDA, the project's Triton kernels (``kernels/``) compile into Triton's cache (``TRITON_CACHE_DIR``, default
  ``~/.triton/cache``) whatever the engine.

Nothing else: the server reads the model directory and answers from memory. Each directory is created if missing,
then a temporary file is written and removed in it; the first failure becomes one line that names the directory,
the variable that moves it, and the fix.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlannedWrite:
    """A directory the server will write: ``what`` it holds, its ``path``, and the ``env`` variable that moves it."""

    what: str
    path: Path
    env: str


def inductor_cache_dir() -> Path:
    """Inductor's cache directory as torch will choose it, computed without creating it."""
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if configured:
        return Path(configured).absolute()
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return Path(default_cache_dir()).absolute()
    except ImportError:  # older layout: the same default, spelled out
        import getpass

        user = getpass.getuser().replace(os.sep, "_")
        return Path(tempfile.gettempdir(), f"torchinductor_{user}")


def planned_writes(cfg, device: str) -> list[PlannedWrite]:
    """The directories a server with config ``cfg`` (``server.config.ServerConfig``) on ``device`` will write."""
    from engines.cache import engine_cache_dir

    engines = {cfg.sit_engine, cfg.decoder_engine}
    on_cuda = device.startswith("cuda")
    writes = []
    if "compile" in engines:
        inductor = inductor_cache_dir()
        writes.append(PlannedWrite("the inductor cache (torch.compile)", inductor, "TORCHINDUCTOR_CACHE_DIR"))
        if on_cuda:
            triton = Path(os.environ.get("TRITON_CACHE_DIR") or inductor / "triton")
            writes.append(PlannedWrite("the Triton cache of compiled kernels", triton, "TRITON_CACHE_DIR"))
    if on_cuda and not os.environ.get("SVG_DISABLE_TRITON"):
        triton = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
        writes.append(PlannedWrite("the Triton cache of the project's kernels", triton, "TRITON_CACHE_DIR"))
    if "tensorrt" in engines:
        writes.append(PlannedWrite("the TensorRT engine cache", engine_cache_dir(), "SVG_ENGINE_CACHE"))
    return writes


def unwritable(write: PlannedWrite) -> str | None:
    """None when ``write.path`` can be created and written; else one line naming the path and the fix."""
    try:
        write.path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=write.path, prefix=".svg-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return (f"{write.what} {write.path} is not writable ({reason}); fix: set {write.env} to a writable "
                f"directory, or make {write.path} writable for uid {os.getuid()} (container: mount the "
                f"/cache/engines volume and chown it to this user)")
    return None


def check_writable(cfg, device: str) -> str | None:
    """The first unwritable directory of :func:`planned_writes` as one line, or None when all are writable."""
    for write in planned_writes(cfg, device):
        problem = unwritable(write)
        if problem:
            return problem
    return None
