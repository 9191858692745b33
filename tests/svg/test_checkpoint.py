"""Checkpoint formats: official layouts at full size, strictness, sigma rows, our safetensors, stats, pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from svg.autoencoder import SVGAutoencoder
from svg.checkpoint import (
    CheckpointError,
    infer_sit_config,
    load_autoencoder,
    load_latent_stats,
    load_sit,
    official_autoencoder_state_dict,
    save_official_autoencoder,
    save_official_sit,
    save_svg,
)
from svg.config import AE_PRESETS, SIT_PRESETS
from svg.latent import LatentNorm, LatentStatsAccumulator, to_latent, to_tokens
from svg.latent import main as latent_main
from svg.pipeline import SVGPipeline, make_random
from svg.sit import SiT


def _randomize(model: torch.nn.Module, std: float = 0.02) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, std)


def _fill_distinct(model: torch.nn.Module) -> None:
    """Give every tensor its own constant: far cheaper than a random init of 676M values, and a swapped, dropped
    or mis-shaped tensor still shows."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_((i + 1) * 1e-3)


def test_full_size_svg_xl_official_layout_round_trip(tmp_path):
    with torch.device("meta"):
        model = SiT(SIT_PRESETS["SVG-XL"])
    model = model.to_empty(device="cpu")
    _fill_distinct(model)
    path = tmp_path / "V1-SVG-XL-test.pt"
    save_official_sit(path, model)
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert list(raw) == ["ema"] and len(raw["ema"]) == 404  # svg_reference.md §7: 404 tensors
    assert infer_sit_config(raw["ema"]) == SIT_PRESETS["SVG-XL"]
    del raw
    loaded = load_sit(path)
    assert loaded.config == SIT_PRESETS["SVG-XL"]
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not loaded.pos_embed.requires_grad


def test_full_size_autoencoder_official_ckpt_round_trip(tmp_path):
    torch.manual_seed(0)
    ae = SVGAutoencoder(AE_PRESETS["svg-ae"]).eval()
    path = tmp_path / "svg_autoencoder_test.ckpt"
    save_official_autoencoder(path, ae, epoch=40)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    counts = {p: sum(k.startswith(p + ".") for k in state) for p in ("encoder", "extra_vit", "decoder")}
    assert counts == {"encoder": 212, "extra_vit": 82, "decoder": 194}  # svg_reference.md §7
    loaded = load_autoencoder(path)
    expected = ae.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():  # non-persistent buffers (RoPE periods) are rebuilt identically too
        torch.testing.assert_close(loaded.encode(image), ae.encode(image), atol=0, rtol=0)


def _fixture_ae_config(parity_dir):
    from svg.parity import autoencoder_config_from_manifest

    manifest = json.loads((parity_dir / "manifest.json").read_text())
    return autoencoder_config_from_manifest(manifest["files"]["ae.safetensors"]["config"])


def test_autoencoder_ckpt_skips_only_the_documented_unused_keys(parity_dir, tmp_path):
    ckpt = torch.load(parity_dir / "ae_ckpt.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("loss.") for k in ckpt["state_dict"])
    ckpt["state_dict"]["decoder.extra.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["decoder.conv_out.bias"]
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_autoencoder(tmp_path / "bad.ckpt", _fixture_ae_config(parity_dir))
    assert "decoder.extra.weight" in str(err.value) and "decoder.conv_out.bias" in str(err.value)
    assert "loss." not in str(err.value) and "norm_vit" not in str(err.value)


def test_strict_sit_loading_lists_keys_and_rejects_wrapper_prefixes(tmp_path):
    model = SiT(SIT_PRESETS["tiny"])
    state = model.state_dict()
    for prefix in ("module.", "_orig_mod."):
        torch.save({"ema": {prefix + k: v for k, v in state.items()}}, tmp_path / "wrapped.pt")
        with pytest.raises(CheckpointError, match=prefix.replace(".", r"\.")):
            load_sit(tmp_path / "wrapped.pt", SIT_PRESETS["tiny"])
    broken = dict(state)
    del broken["blocks.1.mlp.fc2.bias"]
    broken["blocks.9.foo"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        load_sit(tmp_path / "broken.pt", SIT_PRESETS["tiny"])
    assert "blocks.1.mlp.fc2.bias" in str(err.value) and "blocks.9.foo" in str(err.value)
    torch.save(state, tmp_path / "bare.pt")  # a bare state dict loads too
    assert load_sit(tmp_path / "bare.pt").config == SIT_PRESETS["tiny"]


def test_sigma_rows_are_dropped_only_when_zero(tmp_path):
    torch.manual_seed(0)
    cfg = SIT_PRESETS["tiny"]
    model = SiT(cfg).eval()
    _randomize(model)
    with torch.no_grad():
        model.final_layer.linear.weight[cfg.in_channels:] = 0
        model.final_layer.linear.bias[cfg.in_channels:] = 0
    save_official_sit(tmp_path / "zero.pt", model)
    full = load_sit(tmp_path / "zero.pt")
    small = load_sit(tmp_path / "zero.pt", drop_sigma=True)
    assert full.config.out_channels == 2 * cfg.in_channels and small.config.out_channels == cfg.in_channels
    x, t, y = torch.randn(2, cfg.num_tokens, cfg.in_channels), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(small(x, t, y), full.velocity(x, t, y), atol=0, rtol=0)
        model.final_layer.linear.bias[-1] = 1e-3
    save_official_sit(tmp_path / "nonzero.pt", model)
    with pytest.raises(CheckpointError, match="not all zero"):
        load_sit(tmp_path / "nonzero.pt", drop_sigma=True)


def test_our_format_saves_shared_storage_and_keeps_the_config(parity_dir, tmp_path):
    config = AE_PRESETS["tiny"]
    ae = SVGAutoencoder(config)
    shared = torch.randn(10_000)
    with torch.no_grad():  # two weights that are windows of one buffer, like the fixture .ckpt
        ae.decoder.conv_out.bias = torch.nn.Parameter(shared[:3])
        ae.decoder.norm_out.bias = torch.nn.Parameter(shared[1:33])
    save_svg(tmp_path / "autoencoder.safetensors", ae, config, "autoencoder")
    with safe_open(str(tmp_path / "autoencoder.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["svg_format"] == "1" and meta["kind"] == "autoencoder"
    assert json.loads(meta["config"]) == config.to_dict()
    again = load_autoencoder(tmp_path / "autoencoder.safetensors")
    assert again.config == config and torch.equal(again.decoder.norm_out.bias, shared[1:33])
    with pytest.raises(CheckpointError, match="kind"):
        load_sit(tmp_path / "autoencoder.safetensors")


def test_official_autoencoder_layout_matches_the_fixture_ckpt_keys(parity_dir):
    ae = load_autoencoder(parity_dir / "ae_ckpt.ckpt", _fixture_ae_config(parity_dir))
    ours = official_autoencoder_state_dict(ae)
    ref = torch.load(parity_dir / "ae_ckpt.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    ref_keys = {k for k in ref if not k.startswith(("loss.", "mask_token"))}
    assert set(ours) == ref_keys
    assert torch.equal(ours["encoder.rope_embed.periods"], ref["encoder.rope_embed.periods"])
    assert torch.equal(ours["decoder.conv_out.weight"], ref["decoder.conv_out.weight"])


def test_released_stats_file_and_latent_layout(parity_dir):
    norm = load_latent_stats(parity_dir / "dinov3_sp_stats.pt")
    assert norm.mean.shape == (1, 1, 392)
    assert abs(float(norm.mean.mean()) - 0.017610) < 1e-5  # svg_reference.md §3
    assert load_latent_stats(parity_dir / "dinov3_sp_stats.pt", channels=384).channels == 384
    latent = torch.randn(2, 392, 16, 16)
    tokens = to_tokens(latent)
    assert tokens.shape == (2, 256, 392) and torch.equal(tokens[0, 17], latent[0, :, 1, 1])
    assert torch.equal(to_latent(tokens, 16, 16), latent)
    with pytest.raises(ValueError, match="std"):
        LatentNorm(torch.zeros(1, 1, 4), torch.tensor([[[1.0, 0.0, 1.0, 1.0]]]))


def test_stats_tool_streams_in_float64(tmp_path):
    torch.manual_seed(0)
    latents = torch.randn(10, 6, 4, 4) * torch.tensor([1.0, 2, 3, 4, 5, 6]).view(1, 6, 1, 1) + 1000.0
    acc = LatentStatsAccumulator()
    for chunk in latents.split(3):
        acc.update(chunk)
    mean, std = acc.result()
    tokens = to_tokens(latents).reshape(-1, 6).double()
    torch.testing.assert_close(mean.view(-1).double(), tokens.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(std.view(-1).double(), tokens.std(0), atol=1e-5, rtol=1e-6)
    save_file({"latent": latents.contiguous()}, tmp_path / "latents.safetensors")
    assert latent_main([str(tmp_path / "stats.safetensors"), str(tmp_path / "latents.safetensors")]) == 0
    torch.testing.assert_close(load_latent_stats(tmp_path / "stats.safetensors").std, std)


def test_make_random_cli_writes_a_loadable_labelled_directory(tmp_path):
    out = tmp_path / "random"
    proc = subprocess.run([sys.executable, "-m", "svg.pipeline", "make-random", "--preset", "tiny", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pipe = SVGPipeline.from_dir(out)
    assert pipe.metadata["random"] == "true"
    reference = make_random("tiny")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = pipe.encode_tokens(images)
        torch.testing.assert_close(tokens, reference.encode_tokens(images))
        out_sit = pipe.sit(tokens, torch.rand(2), torch.tensor([1, 1000]))
        assert out_sit.abs().max() > 0 and pipe.decode_tokens(tokens).shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="sit.safetensors"):
        SVGPipeline.from_dir(tmp_path)


def test_dinov3_loads_from_a_standalone_meta_style_pth(parity_dir, tmp_path):
    from safetensors.torch import load_file

    from svg.checkpoint import load_dinov3
    from svg.config import DinoConfig
    from svg.dinov3 import patch_tokens

    state = torch.load(parity_dir / "ae_ckpt.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    torch.save({k[len("encoder."):]: v.clone() for k, v in state.items() if k.startswith("encoder.")},
               tmp_path / "dinov3_vits16plus_test.pth")
    model = load_dinov3(tmp_path / "dinov3_vits16plus_test.pth", DinoConfig(depth=2))
    data = load_file(parity_dir / "dinov3.safetensors")
    with torch.no_grad():
        tokens = patch_tokens(model, data["input.images_nonsquare"])  # 224x320: a 14x20 grid through RoPE
    assert tokens.shape == (1, 280, 384)
    assert (tokens - data["output.images_nonsquare.x_norm_patchtokens"]).abs().max() <= 5e-5
    with pytest.raises(CheckpointError, match="blocks.1"):
        load_dinov3(tmp_path / "dinov3_vits16plus_test.pth", DinoConfig(depth=1))
