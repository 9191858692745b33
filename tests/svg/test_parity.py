"""One test per fixture case of shared/fixtures/parity, through the parity runner; and the runner's CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from svg import parity
from tests.conftest import PARITY_DIR

CASES = sorted(json.loads((PARITY_DIR / "manifest.json").read_text())["files"]) if (
    PARITY_DIR / "manifest.json").exists() else []


@pytest.fixture(scope="module")
def context(parity_dir):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return parity._Context(parity_dir, "cpu", 1.0)


@pytest.mark.parametrize("name", CASES)
def test_fixture_case(context, name):
    result = parity.run_case(context, name)
    assert result.passed, result.line()
    assert result.comparisons, "a case that compares nothing proves nothing"


def test_cfg_mode_strings_are_parsed_only_at_the_edge():
    from svg.sampling import GuidanceMode

    star = parity.parse_cfg_mode("cfg_star-1-0", guided=True, scale=1.5)
    assert (star.mode, star.zero_init_steps, star.zero_init_ratio, star.scale) == (GuidanceMode.ZERO_INIT, 1, 0.0, 1.5)
    assert parity.parse_cfg_mode("constant", guided=False, scale=4.0).mode is GuidanceMode.NONE
    assert parity.parse_cfg_mode("early-0.3", guided=True, scale=2.0).interval == (0.3, 1.0)
    with pytest.raises(ValueError, match="cfg_mode"):
        parity.parse_cfg_mode("cfg_star-x", guided=True, scale=2.0)


def _small_set(parity_dir, tmp_path, corrupt: bool):
    """A fixture directory with the shift and stats cases only; optionally with a wrong expected tensor."""
    manifest = json.loads((parity_dir / "manifest.json").read_text())
    keep = ["shift_grid.safetensors", "stats_norm.safetensors", "dinov3_sp_stats.pt"]
    manifest["files"] = {k: manifest["files"][k] for k in keep}
    for name in keep:
        os.symlink(parity_dir / name, tmp_path / name)
    if corrupt:
        data = load_file(parity_dir / "stats_norm.safetensors")
        data["output.normalized"] = data["output.normalized"] + 1e-3  # a "real bug" sized error
        (tmp_path / "stats_norm.safetensors").unlink()
        save_file(data, tmp_path / "stats_norm.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_cli_prints_one_line_per_case_and_the_summary(parity_dir, tmp_path):
    _small_set(parity_dir, tmp_path, corrupt=False)
    proc = subprocess.run([sys.executable, "-m", "svg.parity", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout + proc.stderr
    assert lines[-1] == "3 passed, 0 failed" and proc.returncode == 0


def test_a_wrong_number_fails_its_case_and_the_exit_code(parity_dir, tmp_path, capsys):
    _small_set(parity_dir, tmp_path, corrupt=True)
    code = parity.main([str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2 passed, 1 failed" and code == 1
    assert any(line.startswith("FAIL stats_norm.safetensors") and "output.normalized" in line for line in lines)


def test_runner_builds_models_from_the_manifest_config(tmp_path):
    """Another small config and batch size than the public set: the runner must take the sizes from the manifest."""
    from svg.config import SiTConfig
    from svg.sit import SiT

    torch.manual_seed(7)
    ref_config = {"input_size": 4, "patch_size": 1, "in_channels": 12, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "mlp_ratio": 4, "class_dropout_prob": 0.1, "num_classes": 10, "learn_sigma": True,
                  "qk_norm": True, "use_swiglu": False, "head_dim": 16}
    model = SiT(SiTConfig.from_reference(ref_config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.02)
        x, t, y = torch.randn(1, 16, 12), torch.rand(1), torch.tensor([10])
        out = model(x, t, y)
    tensors = {f"dit.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({"input.x": x, "input.t": t, "input.y": y, "output.out": out})
    save_file(tensors, tmp_path / "dit.safetensors")
    torch.save({"ema": model.state_dict()}, tmp_path / "dit_ckpt.pt")
    out_spec = {"role": "output", "suggested_atol": 1e-5}
    manifest = {"format_version": 1, "files": {
        "dit.safetensors": {"case": "dit", "config": ref_config,
                            "tensors": {"input.x": {"role": "input"}, "output.out": out_spec}},
        "dit_ckpt.pt": {"case": "dit", "tensors": {}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    results = parity.run_directory(tmp_path)
    assert [r.passed for r in results] == [True, True], [r.line() for r in results]


def test_call_trace_counts_discarded_reference_forwards_as_saved_not_failed():
    # late guidance (4 steps): the reference runs the unconditional forward at every step and discards it in the
    # first half (scale 1); our sampler skips those two forwards. A trace differing any other way still fails.
    import torch

    from svg.parity import _compare_calls
    from svg.sampling import Guidance, GuidanceMode, time_grid

    grid, guidance = time_grid(4, 1.0), Guidance(GuidanceMode.LATE, 3.0)
    ts = grid[:4].tolist()
    data = {"r.call_t": torch.tensor([t for t in ts for _ in (0, 1)]), "r.call_uncond": torch.tensor([0, 1] * 4)}
    ours = [(ts[0], 0), (ts[1], 0), (ts[2], 0), (ts[2], 1), (ts[3], 0), (ts[3], 1)]
    seen = {}

    def check(name, got, expected):
        seen[name] = got.shape == expected.shape and torch.equal(got.to(expected.dtype), expected)

    assert _compare_calls(check, "r", ours, data, guidance, grid, "euler") == 2
    assert seen == {"r.call_t": True, "r.call_uncond": True}
    _compare_calls(check, "r", ours[:-1], data, guidance, grid, "euler")  # a missing forward is not a saving
    assert seen["r.call_t"] is False
