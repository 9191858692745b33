"""Model parts on tiny configs: configs, attention switch, SiT behaviour, autoencoder input rules (B37, B39)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from svg import attention as attn_mod
from svg.attention import attention, set_attention_backend
from svg.autoencoder import SVGAutoencoder
from svg.config import AE_PRESETS, SIT_PRESETS, AutoencoderConfig, DinoConfig, SiTConfig
from svg.dinov3 import build_dinov3, dinov3_to_timm, patch_tokens
from svg.residual import match_distribution
from svg.sit import SiT

# Parameter counts of the reference DiT family (svg_reference.md §4).
PAPER_PARAMS = {"SVG-B": 131_382_544, "SVG-L": 459_264_784, "SVG-XL": 676_437_904, "SVG-XXL": 952_705_296}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_sit_presets_have_the_reference_parameter_counts(name):
    with torch.device("meta"):
        model = SiT(SIT_PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


def test_config_round_trip_and_unknown_keys_are_named():
    cfg = AE_PRESETS["tiny"]
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hidden_sise"):
        SiTConfig.from_dict({"hidden_sise": 64})
    with pytest.raises(ValueError, match="num_heads"):
        SiTConfig(hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="z_channels"):
        AutoencoderConfig(dino=DinoConfig(), decoder=AE_PRESETS["tiny"].decoder)
    with pytest.raises(ValueError, match="patch_size"):
        SiTConfig.from_reference({"patch_size": 2})


def test_attention_applies_per_head_layernorm_before_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    w, b = torch.randn(8), torch.randn(8)
    got = attention(q, k, v, q_norm=(w, b, 1e-5), k_norm=(w, b, 1e-5))
    qn = torch.nn.functional.layer_norm(q, (8,), w, b, 1e-5)
    kn = torch.nn.functional.layer_norm(k, (8,), w, b, 1e-5)
    want = torch.softmax(qn @ kn.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="flash"):
        set_attention_backend("flash")


def test_attention_backend_comes_from_env(monkeypatch):
    monkeypatch.setattr(attn_mod, "_backend", None)
    monkeypatch.setenv("SVG_ATTENTION", "sdpa")
    assert attn_mod.get_attention_backend() is attn_mod.AttentionBackend.SDPA
    monkeypatch.setattr(attn_mod, "_backend", None)
    monkeypatch.setenv("SVG_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        attn_mod.get_attention_backend()
    monkeypatch.setattr(attn_mod, "_backend", None)


def test_sit_zero_init_output_and_label_dropout_only_in_train_mode():
    cfg = SIT_PRESETS["tiny"]
    model = SiT(cfg).eval()
    x, t = torch.randn(4, cfg.num_tokens, cfg.in_channels), torch.rand(4)
    y = torch.tensor([0, 1, 2, 3])
    assert model(x, t, y).shape == (4, cfg.num_tokens, cfg.out_channels)
    assert not model(x, t, y).any()  # adaLN-Zero: the untrained model outputs exactly 0
    null = torch.full_like(y, cfg.num_classes)
    emb = model.y_embedder
    torch.testing.assert_close(emb(y, force_drop_ids=torch.ones_like(y)), emb(null))
    emb.dropout_prob = 0.999
    assert torch.equal(emb(y), emb.embedding_table(y))  # eval mode: never dropped
    emb.train()
    assert torch.equal(emb(y), emb(null))  # train mode with p≈1: all dropped


def test_sit_label_changes_every_output_channel_b09():
    torch.manual_seed(0)
    cfg = SIT_PRESETS["tiny"]
    model = SiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.02)
    x, t = torch.randn(1, cfg.num_tokens, cfg.in_channels), torch.rand(1)
    cond = model.velocity(x, t, torch.tensor([3]))
    uncond = model.velocity(x, t, torch.tensor([cfg.num_classes]))
    assert (cond - uncond).abs().amax(dim=(0, 1)).min() > 0  # the last channel too, not just the first 3


def test_alignment_modes():
    torch.manual_seed(0)
    h, r = torch.randn(3, 6, 10) * 2 + 1, torch.randn(3, 2, 10) * 5 - 3
    batch = match_distribution(h, r, "batch")
    per_image = match_distribution(h, r, "per_image")
    for i in range(3):
        alone = match_distribution(h[i: i + 1], r[i: i + 1], "batch")
        torch.testing.assert_close(per_image[i: i + 1], alone)
    assert not torch.allclose(batch, per_image)  # batch mode depends on the neighbours
    with pytest.raises(ValueError, match="align"):
        match_distribution(h, r, "global")


def test_tiny_autoencoder_any_input_size_gives_the_model_latent_b37():
    torch.manual_seed(0)
    ae = SVGAutoencoder(AE_PRESETS["tiny"]).eval()
    c, side = ae.config.latent_channels, ae.config.latent_size
    with torch.no_grad():
        for h, w in [(30, 30), (32, 48), (34, 34), (32, 32)]:  # 250/256x384/272 px scaled to the tiny model
            z = ae.encode(torch.rand(1, 3, h, w) * 2 - 1)
            assert z.shape == (1, c, side, side)
        img = ae.decode(z)
    assert img.shape == (1, 3, 32, 32) and img.abs().max() <= 1
    with pytest.raises(ValueError, match="images"):
        ae.encode(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch"):
        patch_tokens(ae.encoder, torch.rand(1, 3, 30, 30))


def test_dinov3_patch_tokens_exactly_256_and_first_matches_reference_b39(parity_dir):
    state = torch.load(parity_dir / "ae_ckpt.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    native = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    model = build_dinov3(DinoConfig(depth=2))
    model.load_state_dict(dinov3_to_timm(native, model), strict=True)
    data = load_file(parity_dir / "dinov3.safetensors")
    with torch.no_grad():
        tokens = patch_tokens(model, data["input.images256"])
    assert tokens.shape == (2, 256, 384)
    ref = data["output.images256.x_norm_patchtokens"]
    assert (tokens[:, 0] - ref[:, 0]).abs().max() <= 5e-5
    assert (tokens - ref).abs().max() <= 5e-5


def test_sit_captures_as_one_graph_for_torch_compile():
    torch._dynamo.reset()
    cfg = SIT_PRESETS["tiny"]
    model = SiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.02)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # raises on any graph break
    x, t, y = torch.randn(2, cfg.num_tokens, cfg.in_channels), torch.rand(2), torch.tensor([1, cfg.num_classes])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y))
    torch._dynamo.reset()
