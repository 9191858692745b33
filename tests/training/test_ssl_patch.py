"""iBOT-style masked-patch objective of training/ssl.py (the demo encoder's patch-level SSL loss)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import MNIST_PATH
from training.ssl import (DINOHead, DINOModel, build_demo_encoder, masked_patch_loss, random_patch_masks,
                          train_ssl)


def test_random_patch_masks_ratio_and_probability():
    gen = torch.Generator().manual_seed(0)
    m = random_patch_masks(4000, 64, gen, ratio=(0.1, 0.5), prob=0.5)
    frac = m.float().mean(1)
    masked = frac > 0
    assert 0.45 < masked.float().mean() < 0.55  # half of the images carry a mask
    assert frac[masked].min() >= 0.09 and frac.max() <= 0.51
    assert 0.28 < frac[masked].mean() < 0.32  # uniform ratio in [0.1, 0.5]


def test_masked_patch_loss_only_counts_masked_patches():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = True
    center = torch.zeros(1, 7)
    loss = masked_patch_loss(s, t, mask, center)
    s2 = s.clone()
    s2[0, 0], s2[1] = 100.0, -100.0  # unmasked patches and an unmasked image do not matter
    assert masked_patch_loss(s2, t, mask, center) == pytest.approx(loss.item())
    tgt = torch.softmax(t[0, 1] / 0.04, -1)
    assert loss.item() == pytest.approx(-(tgt * torch.log_softmax(s[0, 1] / 0.1, -1)).sum().item(), rel=1e-5)


def test_mask_token_replaces_only_masked_patch_embeddings():
    torch.manual_seed(0)
    enc = build_demo_encoder()
    dim = enc.num_features
    model = DINOModel(enc, DINOHead(dim, 16), DINOHead(dim, 8)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        cls, patches = model(x)
        cls0, patches0 = model(x, mask=torch.zeros(2, 64, dtype=torch.bool))
        mask = torch.zeros(2, 64, dtype=torch.bool)
        mask[1, :10] = True
        cls1, _ = model(x, mask=mask)
    assert patches.shape == (2, 64, 8) and cls.shape == (2, 16)
    assert torch.equal(cls, cls0) and torch.equal(patches, patches0)
    assert torch.equal(cls1[0], cls[0]) and not torch.allclose(cls1[1], cls[1])
    assert model._mask is None  # the mask never outlives the call


@pytest.mark.timeout(300)
def test_train_ssl_with_patch_loss_runs_and_resumes(tmp_path):
    if not MNIST_PATH.is_file():
        pytest.skip(f"MNIST not found at {MNIST_PATH}")
    torch.manual_seed(0)
    enc = train_ssl(build_demo_encoder(), str(MNIST_PATH), tmp_path, steps=2, batch_size=4, warmup=1,
                    patch_weight=1.0, patch_prototypes=16, prototypes=32, ckpt_every=1)
    assert (tmp_path / "encoder.pt").is_file()
    assert not any(p.requires_grad for p in enc.parameters())
    ckpt = torch.load(tmp_path / "ssl_last.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["center_patch"].shape == (1, 16)
    assert any(k.startswith("patch_head.") for k in ckpt["student"])
    # the frozen encoder loads into the plain demo encoder (no extra keys from the iBOT wrapper)
    build_demo_encoder().load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=True)
