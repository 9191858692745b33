"""training.ablation at a tiny budget (seconds): every variant trains, resumes, and lands in the CSV and plot."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.conftest import MNIST_PATH
from training.ablation import VARIANTS, AblationConfig, pixel_images, pixel_tokens, run
from training.evaluate import MNISTClassifier


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: on a shared CPU a second OpenMP thread only adds barrier waits (measured 10-40× slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pixel_tokens_round_trip():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    images = x.expand(-1, 3, -1, -1)
    tokens = pixel_tokens(images)
    assert tokens.shape == (3, 64, 16)
    assert torch.equal(pixel_images(tokens), images)
    # token 1 is the second 4×4 patch of the first patch row
    assert torch.equal(tokens[0, 1], x[0, 0, 0:4, 4:8].reshape(16))


def test_config_rejects_bad_budget():
    with pytest.raises(ValueError, match="eval_at"):
        AblationConfig(eval_at=(4, 2))
    with pytest.raises(ValueError, match="variants"):
        AblationConfig(variants=("svg", "vae"))


@pytest.mark.timeout(600)
def test_tiny_ablation_runs_all_variants_and_resumes(tmp_path):
    if not MNIST_PATH.is_file():
        pytest.skip(f"MNIST not found at {MNIST_PATH}")
    from svg.autoencoder import SVGAutoencoder
    from svg.config import AE_PRESETS

    torch.manual_seed(0)
    ssl = tmp_path / "encoder.pt"
    torch.save(SVGAutoencoder(AE_PRESETS["demo"]).encoder.state_dict(), ssl)
    clf = tmp_path / "clf.pt"  # an untrained classifier: the test checks plumbing, not quality
    torch.save({"model": MNISTClassifier().state_dict(), "test_accuracy": 0.1}, clf)
    cfg = AblationConfig(stage1_steps=2, stage1_batch=4, latent_images=32, eval_at=(1, 2), batch_size=8,
                         psnr_images=8, per_class=2, sample_steps=(2,), warmup=1)
    out, table = tmp_path / "run", tmp_path / "ablation.csv"
    rows = run(str(MNIST_PATH), ssl, out, cfg, table, classifier_path=clf)
    # 4 variants × 2 evaluation points × (no guidance, guidance 1.5) × 1 step count
    assert len(rows) == 16
    assert {r["variant"] for r in rows} == set(VARIANTS)
    assert all(r["fd"] >= 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    with table.open() as f:
        assert len(list(csv.DictReader(f))) == 16
    assert table.with_suffix(".png").stat().st_size > 0
    latents = torch.load(out / "svg" / "tokens.pt", weights_only=True)["tokens"]
    assert latents.shape == (32, 64, 104)
    assert torch.load(out / "pixels" / "tokens.pt", weights_only=True)["tokens"].shape == (32, 64, 16)

    # a longer budget resumes the SiT checkpoints instead of starting over
    step_before = torch.load(out / "svg" / "stage2_last.pt", weights_only=False)["step"]
    assert step_before == 2
    more = run(str(MNIST_PATH), ssl, out, AblationConfig(**{**cfg.__dict__, "eval_at": (1, 2, 3)}), table,
               classifier_path=clf)
    assert len(more) == 24
    assert torch.load(out / "svg" / "stage2_last.pt", weights_only=False)["step"] == 3


def test_latent_diagnostics_counts_redundant_channels():
    from training.ablation import latent_diagnostics

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(40)
    # 12 channels that are 3 independent signals, each copied 4 times: 3 components hold all the variance
    centres = 3 * torch.randn(10, 8, 3, generator=g)  # one random mean per class
    base = torch.randn(400, 8, 3, generator=g) + centres[labels]
    tokens = base.repeat_interleave(4, dim=2) + 1e-4 * torch.randn(400, 8, 12, generator=g)
    mean, std = tokens.mean((0, 1), keepdim=True), tokens.std((0, 1), keepdim=True)
    d = latent_diagnostics(tokens, labels, mean, std, bank=300, queries=100)
    assert d["channels"] == 12 and d["pcs_99"] == 3
    assert 1.0 <= d["participation_ratio"] <= 3.0 + 1e-6  # at most the 3 independent signals
    assert d["knn"] > 0.8  # classes are well separated
