"""Parity runner: reproduce every case of a reference fixture directory.

    python -m svg.parity DIR [--device cpu] [--atol-scale 1.0] [--verbose]

DIR holds a ``manifest.json`` in the format of ``shared/fixtures/parity`` (see its README). Every file entry is one
case; models are built from the configs written in the manifest, never from presets, so other seeds, batch sizes
and small configs work. Each case prints one line; the run ends with exactly one line ``N passed, M failed`` and
exits 1 when M > 0. Every output tensor is compared elementwise with its ``suggested_atol`` (× ``--atol-scale``,
about 10 on GPU), int64 tensors exactly; an output tensor that no check covers fails its case.

Case kinds (manifest ``case``): ``dit`` (safetensors weights, or a ``.pt`` through the checkpoint loader),
``sampler``, ``flow_loss``, ``dinov3``, ``autoencoder`` (``.safetensors`` numbers, or a ``.ckpt`` through the
loader plus save/reload round trips), ``stats``, ``shift``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors.torch import load_file

from svg.autoencoder import SVGAutoencoder
from svg.checkpoint import (
    _official_to_ours,
    load_autoencoder,
    load_latent_stats,
    load_sit,
    load_state_dict_strict,
    save_official_autoencoder,
    save_svg,
)
from svg.config import AutoencoderConfig, DecoderConfig, DinoConfig, ResidualConfig, SiTConfig
from svg.dinov3 import build_dinov3, dinov3_to_timm
from svg.latent import LatentNorm
from svg.residual import match_distribution
from svg.sit import SiT, sincos_pos_embed_2d

__all__ = ["Comparison", "CaseResult", "run_case", "run_directory", "main", "autoencoder_config_from_manifest",
           "dino_config_from_manifest", "parse_cfg_mode"]

DEFAULT_ATOL = 1e-5  # the fixtures' float32 CPU default (README "Tolerances")


@dataclass
class Comparison:
    """One tensor check: its name, max |got − expected| and the tolerance it was held to."""

    name: str
    max_abs_diff: float
    atol: float
    ok: bool


@dataclass
class CaseResult:
    """Outcome of one manifest file entry; ``error`` is set when the case could not run."""

    file: str
    case: str
    comparisons: list[Comparison] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    saved_forwards: int = 0  # reference forwards whose result is discarded and that our sampler does not run
    error: Optional[str] = None

    @property
    def passed(self) -> bool:
        """No error, no unchecked output and every comparison within tolerance."""
        return self.error is None and not self.unchecked and all(c.ok for c in self.comparisons)

    def line(self) -> str:
        """The one-line report of this case (``PASS``/``FAIL`` file (case): details)."""
        head = f"{'PASS' if self.passed else 'FAIL'} {self.file} ({self.case})"
        if self.error:
            return f"{head}: error: {self.error}"
        bad = [c for c in self.comparisons if not c.ok]
        worst = max(self.comparisons, key=lambda c: c.max_abs_diff / max(c.atol, 1e-30), default=None)
        parts = [f"{len(self.comparisons)} tensors"]
        if worst is not None:
            parts.append(f"worst {worst.name} {worst.max_abs_diff:.2e} (atol {worst.atol:.0e})")
        if bad:
            parts.append("over tolerance: " + ", ".join(f"{c.name} {c.max_abs_diff:.2e}>{c.atol:.0e}" for c in bad))
        if self.unchecked:
            parts.append(f"unchecked outputs: {self.unchecked}")
        if self.skipped:
            parts.append(f"skipped optional: {self.skipped}")
        if self.saved_forwards:
            parts.append(f"saved {self.saved_forwards} discarded reference forwards")
        return f"{head}: " + "; ".join(parts)


class _Context:
    """Shared state of one directory run: manifest, device, tolerance scale, cached tensors and models."""

    def __init__(self, directory: Path, device: str, atol_scale: float) -> None:
        self.dir = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.files: dict[str, dict] = self.manifest["files"]
        self.device = torch.device(device)
        self.atol_scale = atol_scale
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._sit: Optional[SiT] = None

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._tensors:
            self._tensors[name] = load_file(self.dir / name)
        return self._tensors[name]

    def sibling(self, case: str, suffix: str = ".safetensors") -> str:
        """The first manifest file of ``case`` with the suffix and tensors (e.g. the dit inputs)."""
        for name, entry in self.files.items():
            if _kind(entry) == case and name.endswith(suffix) and entry.get("tensors"):
                return name
        raise ValueError(f"no {suffix} file with case {case!r} in the manifest")

    def source_file(self, text: str) -> str:
        """The manifest file named at the start of a ``weights`` note (e.g. ``"ae_ckpt.ckpt -> ..."``)."""
        first = text.split()[0] if text else ""
        if first not in self.files:
            raise ValueError(f"weights note {text!r} names no file of the manifest")
        return first

    def dit(self) -> SiT:
        """The DiT of the ``dit`` safetensors case, built from its manifest config and loaded strictly."""
        if self._sit is None:
            name = self.sibling("dit")
            model = SiT(SiTConfig.from_reference(self.files[name]["config"]))
            weights = {k[len("dit."):]: v for k, v in self.tensors(name).items() if k.startswith("dit.")}
            load_state_dict_strict(model, weights, name)
            self._sit = model.to(self.device).eval()
        return self._sit


def _kind(entry: dict) -> str:
    return entry.get("case", "").split()[0]


class _Checker:
    def __init__(self, ctx: _Context, result: CaseResult, specs: dict[str, dict]) -> None:
        self.ctx, self.result, self.specs = ctx, result, specs
        self.checked: set[str] = set()

    def __call__(self, name: str, got: torch.Tensor, expected: torch.Tensor, atol: Optional[float] = None) -> None:
        got = got.detach().to("cpu")
        spec = self.specs.get(name, {})
        if expected.dtype == torch.int64:
            ok = got.shape == expected.shape and torch.equal(got.to(torch.int64), expected)
            diff = 0.0 if ok else float("inf")
            atol = 0.0
        else:
            atol = (atol if atol is not None else spec.get("suggested_atol", DEFAULT_ATOL)) * self.ctx.atol_scale
            if got.shape != expected.shape:
                diff, ok = float("inf"), False
            else:
                diff = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
                ok = diff <= atol
        self.result.comparisons.append(Comparison(name, diff, atol, ok))
        self.checked.add(name)

    def finish(self, optional_prefixes: Sequence[str] = ()) -> None:
        for name, spec in self.specs.items():
            if spec.get("role") == "output" and name not in self.checked:
                if any(name.startswith(p) for p in optional_prefixes):
                    continue
                self.result.unchecked.append(name)


# --------------------------------------------------------------------------------------------------- configs


def dino_config_from_manifest(cfg: dict, img_size: int = 256) -> DinoConfig:
    """DinoConfig from the manifest's reference ``dinov3`` config (hub kwargs); unsupported variants raise.

    Raises:
        ValueError: an FFN other than SwiGLU, unmasked k bias, or another RoPE coordinate normalisation.
    """
    if cfg.get("ffn_layer", "swiglu") != "swiglu":
        raise ValueError(f"dinov3 ffn_layer={cfg['ffn_layer']!r} is unsupported; allowed: 'swiglu'")
    if not cfg.get("mask_k_bias", True):
        raise ValueError("dinov3 mask_k_bias=false is unsupported (timm Eva keeps the k bias at 0)")
    if cfg.get("pos_embed_rope_normalize_coords", "separate") != "separate":
        raise ValueError(f"dinov3 pos_embed_rope_normalize_coords={cfg['pos_embed_rope_normalize_coords']!r} is "
                         "unsupported; allowed: 'separate'")
    patch = cfg.get("patch_size", 16)
    img_size = patch * max(1, img_size // patch)  # the nominal size only sets defaults; RoPE takes any multiple
    embed = cfg.get("embed_dim", 384)
    hidden = cfg.get("swiglu_hidden") or int(embed * cfg.get("ffn_ratio", 6) * 2 / 3)
    return DinoConfig(img_size=img_size, patch_size=patch, embed_dim=embed,
                      depth=cfg.get("depth", 12), num_heads=cfg.get("num_heads", 6), swiglu_hidden=hidden,
                      num_storage_tokens=cfg.get("n_storage_tokens", 4),
                      rope_base=float(cfg.get("pos_embed_rope_base", 100.0)))


def autoencoder_config_from_manifest(cfg: dict) -> AutoencoderConfig:
    """AutoencoderConfig from the manifest's reference ``DinoDecoder`` config.

    Raises:
        ValueError: ``use_outnorm`` false (alignment off) or unsupported DINO variants.
    """
    extra = cfg.get("extra_vit_config", {})
    if not extra.get("use_outnorm", True):
        raise ValueError("extra_vit_config.use_outnorm=false is unsupported (the release aligns, Eq. 6)")
    rv, dd = cfg["residual_vit"], cfg["ddconfig"]
    residual = ResidualConfig(image_size=rv["image_size"], patch_size=rv["patch_size"], num_layers=rv["num_layers"],
                              num_heads=rv["num_heads"], hidden_dim=rv["hidden_dim"], mlp_dim=rv["mlp_dim"],
                              out_dim=extra.get("output_dim", 8), dropout=rv.get("dropout", 0.1),
                              attention_dropout=rv.get("attention_dropout", 0.1))
    decoder = DecoderConfig(z_channels=dd["z_channels"], ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]),
                            num_res_blocks=dd["num_res_blocks"], attn_resolutions=tuple(dd["attn_resolutions"]),
                            resolution=dd["resolution"], out_ch=dd.get("out_ch", 3), dropout=dd.get("dropout", 0.0))
    dino = dino_config_from_manifest(cfg["dinov3"], img_size=rv["image_size"])
    return AutoencoderConfig(dino=dino, residual=residual, decoder=decoder,
                             legacy_embed_dim=cfg.get("embed_dim", 32))


def parse_cfg_mode(cfg_mode: str, guided: bool, scale: float) -> Any:
    """Translate a reference ``cfg_mode`` string into ``svg.sampling.Guidance`` (done only at this edge).

    ``constant``, ``cfg_star-K-r``, ``late``, ``linear``, ``early-X``; unguided runs give mode ``none``.

    Raises:
        ValueError: an unknown mode string.
    """
    from svg.sampling import Guidance, GuidanceMode

    if not guided:
        return Guidance(mode=GuidanceMode.NONE, scale=1.0)
    if cfg_mode == "constant":
        return Guidance(mode=GuidanceMode.CONSTANT, scale=scale)
    if cfg_mode in ("late", "linear"):
        return Guidance(mode=GuidanceMode(cfg_mode), scale=scale)
    parts = cfg_mode.split("-")
    if parts[0] == "cfg_star" and len(parts) == 3:
        return Guidance(mode=GuidanceMode.ZERO_INIT, scale=scale, zero_init_steps=int(parts[1]),
                        zero_init_ratio=float(parts[2]))
    if parts[0] == "early" and len(parts) == 2:
        return Guidance(mode=GuidanceMode.EARLY, scale=scale, interval=(float(parts[1]), 1.0))
    raise ValueError(f"cfg_mode={cfg_mode!r} is unknown; allowed: constant, cfg_star-K-r, late, linear, early-X")


# --------------------------------------------------------------------------------------------------- cases


def _dit_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    src = ctx.sibling("dit")
    data = ctx.tensors(src)
    if name.endswith(".safetensors"):
        model = ctx.dit()
        stored = data.get("dit.pos_embed")
        if stored is not None:
            cfg = model.config
            check("pos_embed (own sin-cos table)", sincos_pos_embed_2d(cfg.hidden_size, cfg.input_size)[None],
                  stored, atol=1e-6)
    else:
        config = SiTConfig.from_reference(ctx.files[src]["config"])
        model = load_sit(ctx.dir / name, config).to(ctx.device)
        check.specs = ctx.files[src]["tensors"]
    dev = ctx.device
    with torch.no_grad():
        out = model(data["input.x"].to(dev), data["input.t"].to(dev), data["input.y"].to(dev))
    check("output.out", out, data["output.out"])


class _Recorder:
    """Wraps the model and records, per forward, the (t, uses-null-label) evaluations in reference order."""

    def __init__(self, model: SiT) -> None:
        self.model, self.calls = model, []
        self.null = model.config.num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for tv in sorted(set(t.tolist())):
            rows = [i for i, v in enumerate(t.tolist()) if v == tv]
            labels = {int(y[i]) == self.null for i in rows}
            self.calls += [(tv, 0)] * (False in labels) + [(tv, 1)] * (True in labels)
        return self.model(x, t, y)


def _sampler_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    from svg.sampling import sample

    data = ctx.tensors(name)
    model = ctx.dit()
    z, y = data["input.z"].to(ctx.device), data["input.y"].to(ctx.device)
    optional = []
    for run, spec in entry["runs"].items():
        try:
            guidance = parse_cfg_mode(spec["cfg_mode"], spec["guided"], float(spec["cfg"]))
        except ValueError:
            if spec.get("optional"):
                check.result.skipped.append(run)
                optional.append(run + ".")
                continue
            raise
        recorder = _Recorder(model)
        with torch.no_grad():
            res = sample(recorder, z, y, steps=spec["steps"], guidance=guidance, shift=spec["timestep_shift"],
                         solver=spec["mode"])
        check(f"{run}.final", res.latents, data[f"{run}.final"])
        check(f"{run}.t_seq", res.t_grid, data[f"{run}.t_seq"])
        check(f"{run}.dt", res.t_grid[1:] - res.t_grid[:-1], data[f"{run}.dt"])
        check.result.saved_forwards += _compare_calls(check, run, recorder.calls, data, guidance, res.t_grid,
                                                      spec["mode"])
    check.finish(optional)


def _compare_calls(check: _Checker, run: str, calls: list, data: dict, guidance: Any, grid: torch.Tensor,
                   solver: str) -> int:
    """Compare the evaluations that affect the output; returns how many reference forwards were saved.

    The reference computes, and then discards, the conditional forward of zero-init steps (v = −r·v_u) and the
    unconditional forward wherever the effective scale is 1 (e.g. the early steps of ``late`` guidance). Our
    schedule (``svg.sampling.schedule``) skips exactly those: each reference call our schedule marks as skipped is
    removed once and counted as a saving. Every other difference in the call trace stays a failure.
    """
    from svg.sampling import schedule

    ref_t, ref_u = data[f"{run}.call_t"].tolist(), data[f"{run}.call_uncond"].tolist()
    saved: list[tuple[float, int]] = []
    if guidance.mode.value != "none":
        for e in schedule(grid, guidance, solver, label=0, num_classes=1):  # label 1 = null: zero-init only
            if e.label == 1:  # zero-init: the reference's conditional call is discarded
                saved.append((e.t, 0))
            elif not e.twin:  # scale 1 here: the reference's unconditional call is discarded
                saved.append((e.t, 1))
    ref = []
    for call in zip(ref_t, ref_u):
        if call in saved:
            saved.remove(call)
        else:
            ref.append(call)
    saved_count = len(ref_t) - len(ref)
    got_t = torch.tensor([c[0] for c in calls], dtype=torch.float32)
    got_u = torch.tensor([c[1] for c in calls], dtype=torch.int64)
    check(f"{run}.call_t", got_t, torch.tensor([r[0] for r in ref], dtype=torch.float32))
    check(f"{run}.call_uncond", got_u, torch.tensor([r[1] for r in ref], dtype=torch.int64))
    return saved_count



def _flow_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    from svg.flow import flow_matching_loss

    data = {k: v.to(ctx.device) for k, v in ctx.tensors(name).items()}
    with torch.no_grad():
        loss, mse, t = flow_matching_loss(ctx.dit(), data["input.x"], data["input.y"], noise=data["input.z0"],
                                          u=data["input.u"], shift=entry["config"]["timestep_shift"])
    check("output.t", t, data["output.t"].cpu())
    check("output.mse", mse, data["output.mse"].cpu())
    check("output.loss", loss, data["output.loss"].cpu())


def _official_state_dict(ctx: _Context, weights_note: str) -> dict[str, torch.Tensor]:
    src = ctx.source_file(weights_note)
    ckpt = torch.load(ctx.dir / src, map_location="cpu", weights_only=True)
    return ckpt.get("state_dict", ckpt)


def _dinov3_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    state = _official_state_dict(ctx, entry.get("weights", ""))
    native = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    model = build_dinov3(dino_config_from_manifest(entry["config"]))
    load_state_dict_strict(model, dinov3_to_timm(native, model), "encoder.* of " + entry.get("weights", ""))
    model.to(ctx.device)
    data = ctx.tensors(name)
    prefix = model.num_prefix_tokens
    for key in [k for k in data if k.startswith("input.")]:
        image = key[len("input."):]
        with torch.no_grad():
            feats = model.forward_features(data[key].to(ctx.device))
        outputs = {"x_norm_clstoken": feats[:, 0], "x_storage_tokens": feats[:, 1:prefix],
                   "x_norm_patchtokens": feats[:, prefix:]}
        for field_name, got in outputs.items():
            full = f"output.{image}.{field_name}"
            if full in data:
                check(full, got, data[full])


def _check_autoencoder(ctx: _Context, ae: SVGAutoencoder, data: dict, check: _Checker, prefix: str = "") -> None:
    dev = ctx.device
    images = data["input.images"].to(dev)
    with torch.no_grad():
        latent, residual = ae.encode_features(ae.preprocess(images), align="batch")
        single = torch.cat([ae.encode(images[i: i + 1], align="batch") for i in range(images.shape[0])])
        recon = ae.decode(data["output.latent"].to(dev), clamp=False)
    check(prefix + "output.latent", latent, data["output.latent"])
    check(prefix + "output.latent_single", single, data["output.latent_single"])
    check(prefix + "output.residual_raw", residual, data["output.residual_raw"])
    check(prefix + "output.recon", recon, data["output.recon"])
    if "match.h" in data:
        out = match_distribution(data["match.h"], data["match.h_vit"], "batch", ae.config.align_eps)
        check(prefix + "match.out", out, data["match.out"])


def _autoencoder_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    src = ctx.sibling("autoencoder")
    config = autoencoder_config_from_manifest(ctx.files[src]["config"])
    data = ctx.tensors(src)
    if name.endswith(".safetensors"):
        ae = SVGAutoencoder(config)
        weights_note = entry.get("weights", "")
        state = _official_to_ours(_official_state_dict(ctx, weights_note), ae, weights_note)
        load_state_dict_strict(ae, state, weights_note)
        _check_autoencoder(ctx, ae.to(ctx.device).eval(), data, check)
        return
    atol = ctx.files[src]["tensors"]["output.latent"].get("suggested_atol", DEFAULT_ATOL)
    check.specs = {}
    ae = load_autoencoder(ctx.dir / name, config).to(ctx.device)
    with tempfile.TemporaryDirectory() as tmp:
        # official layout round trip, then our safetensors (the .ckpt's tensors share storage: clone on save)
        save_official_autoencoder(Path(tmp) / "ae.ckpt", ae.cpu())
        again = load_autoencoder(Path(tmp) / "ae.ckpt", config)
        save_svg(Path(tmp) / "ae.safetensors", again, config, "autoencoder")
        ours = load_autoencoder(Path(tmp) / "ae.safetensors").to(ctx.device)
    images = data["input.images"].to(ctx.device)
    for label, model in (("", ae.to(ctx.device)), ("reloaded ", ours)):
        with torch.no_grad():
            latent = model.encode(images, align="batch")
        check(label + "output.latent", latent, data["output.latent"], atol=atol)


def _stats_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    if not name.endswith(".safetensors"):
        src = ctx.sibling("stats")
        data = ctx.tensors(src)
        norm = load_latent_stats(ctx.dir / name)
        check("stats.mean", norm.mean, data["stats.mean"], atol=0.0)
        check("stats.std", norm.std, data["stats.std"], atol=0.0)
        return
    data = ctx.tensors(name)
    stats_file = entry.get("config", {}).get("stats_file")
    if stats_file and (ctx.dir / stats_file).exists():
        norm = load_latent_stats(ctx.dir / stats_file, channels=data["stats.mean"].shape[-1])
    else:
        norm = LatentNorm(data["stats.mean"], data["stats.std"])
    normalized = norm.normalize(data["input.latent"])
    check("output.normalized", normalized, data["output.normalized"])
    check("output.denormalized", norm.denormalize(normalized), data["output.denormalized"])


def _shift_case(ctx: _Context, name: str, entry: dict, check: _Checker) -> None:
    from svg.sampling import shift_time, time_grid

    data = ctx.tensors(name)
    cfg = entry["config"]
    for n in cfg["N"]:
        for s in cfg["s"]:
            grid = time_grid(int(n), float(s))
            check(f"N{n}.s{s}.t_seq", grid, data[f"N{n}.s{s}.t_seq"])
            check(f"N{n}.s{s}.dt", grid[1:] - grid[:-1], data[f"N{n}.s{s}.dt"])
    if "train.u" in data:
        check("train.t_shifted", shift_time(data["train.u"], float(cfg["train_s"])), data["train.t_shifted"])


_CASES: dict[str, Callable[[_Context, str, dict, _Checker], None]] = {
    "dit": _dit_case,
    "sampler": _sampler_case,
    "flow_loss": _flow_case,
    "dinov3": _dinov3_case,
    "autoencoder": _autoencoder_case,
    "stats": _stats_case,
    "shift": _shift_case,
}


def run_case(ctx: _Context, name: str) -> CaseResult:
    """Run one manifest file entry; exceptions become a failed result with the message."""
    entry = ctx.files[name]
    kind = _kind(entry)
    result = CaseResult(name, entry.get("case", "?"))
    check = _Checker(ctx, result, dict(entry.get("tensors", {})))
    handler = _CASES.get(kind)
    if handler is None:
        result.error = f"unknown case kind {kind!r}; known: {sorted(_CASES)}"
        return result
    try:
        handler(ctx, name, entry, check)
        if kind != "sampler":
            check.finish()
    except Exception as exc:  # one broken case must not hide the others; reported as FAIL with its message
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def run_directory(directory: str | Path, device: str = "cpu", atol_scale: float = 1.0,
                  only: Optional[Sequence[str]] = None) -> list[CaseResult]:
    """Run every case (or the files in ``only``) of ``directory/manifest.json``; eval mode, no autocast, TF32 off.

    Raises:
        FileNotFoundError: no manifest.json in the directory.
    """
    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise FileNotFoundError(f"{directory / 'manifest.json'} not found")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ctx = _Context(directory, device, atol_scale)
    names = list(only) if only else list(ctx.files)
    return [run_case(ctx, name) for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1 when any case failed; 2 with one line for bad arguments)."""
    from svg.cli import existing_file, float_type, guard

    parser = argparse.ArgumentParser(prog="python -m svg.parity", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="directory with manifest.json")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--atol-scale", type=float_type(0.0, exclusive_minimum=True), default=1.0,
                        help="multiply every tolerance (about 10 on GPU)")
    parser.add_argument("--only", nargs="*", help="run only these manifest files")
    args = parser.parse_args(argv)
    existing_file(parser, "directory", args.directory / "manifest.json")
    try:
        device_type = torch.device(args.device).type
    except RuntimeError:  # torch's message lists every backend it knows, not what this runner accepts
        device_type = None
    if device_type not in ("cpu", "cuda") or (device_type == "cuda" and not torch.cuda.is_available()):
        parser.error(f"argument --device: {args.device!r} is not available; allowed: cpu"
                     + (", cuda, cuda:N" if torch.cuda.is_available() else " (no CUDA device is visible)"))
    with guard(parser, "directory", errors=(ValueError, KeyError)):
        files = json.loads((args.directory / "manifest.json").read_text())["files"]
    unknown = [name for name in args.only or [] if name not in files]
    if unknown:
        parser.error(f"argument --only: {unknown} are not files of the manifest; allowed: {sorted(files)}")
    results = run_directory(args.directory, args.device, args.atol_scale, args.only)
    for r in results:
        sys.stdout.write(r.line() + "\n")
    failed = sum(not r.passed for r in results)
    sys.stdout.write(f"{len(results) - failed} passed, {failed} failed\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
