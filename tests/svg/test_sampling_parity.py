"""The sampler's time grids and sampling runs reproduce the reference numbers (shift_grid / sampler fixtures)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from svg.config import SiTConfig
from svg.sampling import Guidance, GuidanceMode, sample, shift_time, time_grid
from svg.sit import SiT


def _manifest(parity_dir):
    return json.loads((parity_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fixture_dit(parity_dir):
    """The reference DiT of dit.safetensors, built from the manifest's config and loaded strictly."""
    spec = _manifest(parity_dir)["files"]["dit.safetensors"]["config"]
    known = {k: v for k, v in spec.items() if k in SiTConfig.__dataclass_fields__}
    model = SiT(SiTConfig(**known)).eval()
    weights = {k[len("dit."):]: v for k, v in load_file(parity_dir / "dit.safetensors").items()
               if k.startswith("dit.")}
    model.load_state_dict(weights, strict=True)
    return model


def test_time_grid_matches_shift_grid_fixture_bit_exactly(parity_dir):
    grids = load_file(parity_dir / "shift_grid.safetensors")
    config = _manifest(parity_dir)["files"]["shift_grid.safetensors"]["config"]
    checked = 0
    for n in config["N"]:
        for s in config["s"]:
            grid = time_grid(n, s)
            assert grid.dtype == torch.float32 and grid.shape == (n + 1,)
            assert torch.equal(grid, grids[f"N{n}.s{s}.t_seq"]), (n, s)
            assert torch.equal(grid.diff(), grids[f"N{n}.s{s}.dt"]), (n, s)
            checked += 1
    assert checked == len(config["N"]) * len(config["s"])
    u = grids["train.u"]
    assert torch.equal(shift_time(u, config["train_s"]), grids["train.t_shifted"])


def test_shift_is_identity_for_non_positive_s_and_ends_are_exact():
    u = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(u, 0.0), u) and torch.equal(shift_time(u, -2.0), u)
    for s in (0.15, 0.4, 1.0, 3.0):
        grid = time_grid(25, s)
        assert grid[0] == 0.0 and grid[-1] == 1.0 and bool((grid.diff() > 0).all())
    # 25 steps at s = 0.15, as quoted in svg_reference.md §5: 0, .0062, .0129, .0200, ..., .7826, 1
    grid = time_grid(25, 0.15)
    assert torch.allclose(grid[1:4], torch.tensor([0.0062, 0.0129, 0.0200]), atol=5e-5)
    assert abs(float(grid[-2]) - 0.7826) < 5e-5


@pytest.mark.parametrize("s", [1e-300, 1e-20, 1e-16, 1e-14, 1e-12, 1e-8, 1e-3])
def test_tiny_shifts_keep_the_grid_finite_and_end_at_one(s):
    """For tiny s, 1 + (s − 1)·t cancels: 0/0 at t = 1 for s < 1e-16, and 1.0008 or 0.90 instead of 1 around
    1e-14. The grid must stay finite, inside [0, 1], non-decreasing, and end at exactly 1."""
    grid = time_grid(25, s)
    assert bool(grid.isfinite().all()) and grid[0] == 0.0 and grid[-1] == 1.0, grid
    assert bool((grid.diff() >= 0).all()) and float(grid.max()) == 1.0
    assert shift_time(1.0, 1e-20) == 1.0 and float(shift_time(torch.ones(3, dtype=torch.float64), 1e-20).min()) == 1


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True])
def test_time_grid_rejects_bad_step_counts(bad):
    with pytest.raises(ValueError, match="steps"):
        time_grid(bad, 0.15)


def _guidance(run: dict) -> Guidance:
    if not run["guided"]:
        return Guidance()
    mode = run["cfg_mode"]
    if mode == "constant":
        return Guidance(GuidanceMode.CONSTANT, run["cfg"])
    if mode.startswith("cfg_star-"):
        _, k, r = mode.split("-")  # reference naming cfg_star-K-r, parsed here only
        return Guidance(GuidanceMode.ZERO_INIT, run["cfg"], zero_init_steps=int(k), zero_init_ratio=float(r))
    if mode == "late":
        return Guidance(GuidanceMode.LATE, run["cfg"])
    if mode == "linear":
        return Guidance(GuidanceMode.LINEAR, run["cfg"])
    if mode.startswith("early-"):
        return Guidance(GuidanceMode.EARLY, run["cfg"], interval=(float(mode.split("-")[1]), 1.0))
    raise AssertionError(f"unknown cfg_mode {mode} in the fixture")


def test_sampler_reproduces_every_reference_run(parity_dir, fixture_dit):
    spec = _manifest(parity_dir)["files"]["sampler.safetensors"]
    tensors = load_file(parity_dir / "sampler.safetensors")
    z, y = tensors["input.z"], tensors["input.y"]
    calls: list[tuple[list[float], list[int]]] = []

    def recording_model(x, t, labels):
        calls.append((t.tolist(), labels.tolist()))
        return fixture_dit(x, t, labels)

    for name, run in spec["runs"].items():
        calls.clear()
        result = sample(recording_model, z, y, steps=run["steps"], guidance=_guidance(run),
                        shift=run["timestep_shift"], solver=run["mode"])
        atol = spec["tensors"][f"{name}.final"]["suggested_atol"]
        err = (result.latents - tensors[f"{name}.final"]).abs().max().item()
        assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol}"
        assert torch.equal(result.t_grid, tensors[f"{name}.t_seq"]), name

        # The reference's call sequence: one call per evaluation with cond then null for guided runs; we batch the
        # pair into one forward, so our per-call t equals every other reference t (or every t when unguided).
        ref_t = tensors[f"{name}.call_t"].tolist()
        ref_uncond = tensors[f"{name}.call_uncond"].tolist()
        evaluations = ref_t[::2] if run["guided"] else ref_t
        assert [c[0][0] for c in calls] == evaluations, name
        assert len(ref_t) == run["model_calls"]
        per_image = run["model_calls"] // (2 if run["guided"] else 1)
        assert result.nfe == per_image, name
        # rows: the reference's model calls × batch, except that zero-init steps need only the null row
        zero_init = run["cfg_mode"].startswith("cfg_star") and run["guided"]
        expected_rows = run["model_calls"] * z.shape[0] - (z.shape[0] if zero_init else 0)
        assert result.model_rows == expected_rows, name
        if zero_init:
            assert calls[0][1] == [1000] * z.shape[0]  # first step: null rows only (v = −r·v_u)
            assert ref_uncond[1] == 1
        elif run["guided"]:
            assert calls[0][1] == y.tolist() + [1000] * z.shape[0]


@pytest.mark.gpu
def test_sampler_reproduces_the_reference_on_cuda(parity_dir, fixture_dit):
    """Same runs on the GPU with TF32 off; the fixtures' README allows about 10× the CPU tolerance there."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    spec = _manifest(parity_dir)["files"]["sampler.safetensors"]
    tensors = load_file(parity_dir / "sampler.safetensors")
    model = fixture_dit.to("cuda")
    try:
        for name, run in spec["runs"].items():
            result = sample(model, tensors["input.z"].cuda(), tensors["input.y"].cuda(), steps=run["steps"],
                            guidance=_guidance(run), shift=run["timestep_shift"], solver=run["mode"])
            assert result.latents.device.type == "cuda"
            atol = 10 * spec["tensors"][f"{name}.final"]["suggested_atol"]
            err = (result.latents.cpu() - tensors[f"{name}.final"]).abs().max().item()
            assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol}"
    finally:
        fixture_dit.to("cpu")
