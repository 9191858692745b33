"""Stage-1 loss pieces: adaptive GAN weight edge cases (T10), perceptual nets pinned to eval mode (T11)."""

from __future__ import annotations

import torch
from torch import nn

from svg.config import AE_PRESETS
from svg.dinov3 import build_dinov3
from training.losses import LPIPS, EncoderFeatureLoss, PatchDiscriminator, adaptive_weight, hinge_d_loss
from training.stage1 import Stage1Config, Stage1Loss


def _last_layer_graph(scale: float = 1.0):
    torch.manual_seed(0)
    last = nn.Conv2d(4, 3, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    out = last(x)
    return last.weight, out


def test_adaptive_weight_zero_gan_gradient_is_finite():
    w, out = _last_layer_graph()
    nll = out.abs().sum()
    g = (out * 0).sum()  # constant discriminator: zero gradient w.r.t. the last layer
    weight = adaptive_weight(nll, g, w)
    assert torch.isfinite(weight) and 0 <= weight.item() <= 1e4 * 0.5
    assert not weight.requires_grad


def test_adaptive_weight_fp16_large_gradients_is_finite():
    w, _ = _last_layer_graph()
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        out = nn.functional.conv2d(x, w, padding=1)
        nll = (out * 1e5).abs().sum()
        g = -(out * 1e5).mean()
    weight = adaptive_weight(nll, g, w)
    assert torch.isfinite(weight) and 0 <= weight.item() <= 0.5 * 1e4


def test_no_gan_and_no_autograd_grad_before_disc_start(monkeypatch):
    loss = Stage1Loss(None, Stage1Config(disc_start=10, perceptual_weight=0.0))
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1))
    w, out = _last_layer_graph()
    x = torch.zeros_like(out)
    total, logs = loss.generator_loss(x, out, step=9, last_layer=w)
    assert calls == [] and "g" not in logs
    assert torch.equal(total, (x - out).abs().sum() / x.shape[0])  # exactly the reconstruction term


def test_encoder_feature_loss_stays_eval_and_frozen():
    loss = EncoderFeatureLoss(build_dinov3(AE_PRESETS["tiny"].dino))
    parent = nn.ModuleDict({"perceptual": loss})
    parent.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loss(x, y), loss(x, y))
    assert torch.all(loss(x, x) < 1e-6) and torch.all(loss(x, y) > 0)


def test_lpips_from_local_files_stays_eval(tmp_path):
    from torchvision.models import vgg16

    torch.manual_seed(0)
    torch.save(vgg16(weights=None).state_dict(), tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)},
               tmp_path / "vgg.pth")
    lpips = LPIPS(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    nn.ModuleList([lpips]).train()
    assert not lpips.training and not any(p.requires_grad for p in lpips.parameters())
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(lpips(x, y), lpips(x, y)) and lpips(x, y).item() > 0


def test_lpips_missing_file_names_the_path(tmp_path):
    try:
        LPIPS(tmp_path / "nope.pth", tmp_path / "vgg.pth")
    except FileNotFoundError as e:
        assert "nope.pth" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_hinge_and_discriminator_shapes():
    d = PatchDiscriminator(n_layers=2)
    logits = d(torch.randn(2, 3, 32, 32))
    assert logits.dim() == 4 and logits.shape[:2] == (2, 1)
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(2), torch.zeros(2)).item() == 1.0


def test_frozen_encoder_and_perceptual_net_absent_from_every_optimizer_group():
    """T11: only the residual encoder, decoder and mask token (generator) and the discriminator are optimised."""
    from svg.autoencoder import SVGAutoencoder
    from training.stage1 import Stage1Model, build_optimizers

    torch.manual_seed(0)
    ae = SVGAutoencoder(AE_PRESETS["tiny"])
    model = Stage1Model(ae, mask_ratio=0.1)
    cfg = Stage1Config(disc_start=0, disc_layers=2)
    loss_fn = Stage1Loss(EncoderFeatureLoss(ae.encoder), cfg)
    opt_g, opt_d = build_optimizers(model, loss_fn, cfg)
    optimised = [id(p) for opt in (opt_g, opt_d) for group in opt.param_groups for p in group["params"]]
    frozen = {id(p) for p in [*ae.encoder.parameters(), *loss_fn.perceptual.parameters()]}
    assert frozen and not frozen & set(optimised)
    expected = {id(p) for n, p in model.named_parameters() if not n.startswith("ae.encoder.")}
    expected |= {id(p) for p in loss_fn.discriminator.parameters()}
    assert sorted(optimised) == sorted(expected)  # each trainable parameter exactly once
    assert model.mask_token is not None and id(model.mask_token) in optimised
