"""Smoke test: the tiny preset through SSL, stage 1, latent statistics and stage 2 for a few steps, exported in
our directory format and loaded by svg.pipeline and by the server's loader (issue 4 "done when")."""

from __future__ import annotations

import json

import pytest
import torch

from svg.config import AE_PRESETS, SIT_PRESETS
from svg.pipeline import SVGPipeline
from tests.conftest import MNIST_PATH
from training.common import Batches
from training.data import load_mnist
from training.export import export_autoencoder, export_latent_stats, export_sit
from training.stage1 import Stage1Config, build_perceptual, reconstruction_psnr, train_stage1
from training.stage2 import Stage2Config, Stage2Trainer, TokenBatches, encode_dataset, latent_statistics

pytestmark = pytest.mark.mnist  # fails in CI when ../shared is missing (tests/conftest.py)


def test_tiny_preset_end_to_end(tmp_path):
    from svg.autoencoder import SVGAutoencoder
    from svg.dinov3 import build_dinov3
    from training.ssl import train_ssl

    torch.manual_seed(0)
    runs, model_dir = tmp_path / "runs", tmp_path / "model"
    encoder = train_ssl(build_dinov3(AE_PRESETS["tiny"].dino), str(MNIST_PATH), runs / "ssl", steps=2,
                        batch_size=8, local_crops=1, prototypes=64, warmup=1)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training

    ae = SVGAutoencoder(AE_PRESETS["tiny"])
    ae.encoder.load_state_dict(torch.load(runs / "ssl" / "encoder.pt", weights_only=True))
    frozen = {k: v.clone() for k, v in ae.encoder.state_dict().items()}
    cfg1 = Stage1Config(steps=2, batch_size=8, lr=1e-3, disc_start=1, disc_layers=2, ckpt_every=1)
    ae = train_stage1(ae, str(MNIST_PATH), runs / "stage1", cfg1, build_perceptual(ae.encoder, None, None))
    assert all(torch.equal(v, frozen[k]) for k, v in ae.encoder.state_dict().items())  # encoder stays frozen
    assert (runs / "stage1" / "stage1_last.pt").is_file()
    export_autoencoder(ae, model_dir, {"preset": "tiny"})

    images, labels = load_mnist(MNIST_PATH, "test").tensors
    images, labels = images[:64], labels[:64]
    tokens = encode_dataset(ae, images, batch=32)  # (64, 64, 36)
    norm = latent_statistics(tokens)
    assert norm.mean.shape == (1, 1, 36) and torch.all(norm.std > 0)
    export_latent_stats(norm, model_dir)

    trainer = Stage2Trainer(SIT_PRESETS["tiny"], Stage2Config(steps=3, batch_size=8, lr=1e-3))
    batches = TokenBatches(tokens, labels, norm, 8, trainer.d, seed=0, start_batch=0)
    for _ in range(3):
        logs = trainer.step(lambda i: next(batches))
        assert torch.isfinite(torch.tensor(logs["loss"]))
    export_sit(trainer.ema.model, model_dir, {"preset": "tiny"})

    pipe = SVGPipeline.from_dir(model_dir)
    for (k, v), w in zip(trainer.ema.model.state_dict().items(), pipe.sit.state_dict().values()):
        assert torch.equal(v, w), k
    out = pipe.decode_tokens(torch.randn(2, 64, 36))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    assert 0 < reconstruction_psnr(pipe.autoencoder, images[:8]) < 100

    from server.config import ServerConfig
    from server.model import load_model

    loaded = load_model(ServerConfig(model_dir=model_dir, device="cpu"))
    assert loaded.num_classes == SIT_PRESETS["tiny"].num_classes and loaded.preset == "tiny"

    from training.evaluate import MNISTClassifier, evaluate

    torch.save({"model": MNISTClassifier().state_dict(), "test_accuracy": 0.1}, tmp_path / "clf.pt")
    result = evaluate(model_dir, MNIST_PATH, steps=(2,), per_class=1, psnr_images=4,
                      classifier_path=tmp_path / "clf.pt")
    assert set(result["accuracy"]) == {"2"} and 0 <= result["accuracy"]["2"] <= 1
    assert result["psnr_images"] == 4 and result["reconstruction_psnr_db"] > 0
    json.dumps(result)  # the model card and eval.json need plain JSON


def test_batches_resume_mid_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(40).float().view(40, 1), torch.arange(40))
    full = Batches(data, 4, seed=5).iterate(0)
    seq = [next(full)[1] for _ in range(14)]  # crosses the 10-batch epoch boundary
    resumed = Batches(data, 4, seed=5).iterate(7)
    assert all(torch.equal(next(resumed)[1], b) for b in seq[7:])
    assert sorted(torch.cat(seq[:10]).tolist()) == list(range(40))  # one epoch = a permutation


def test_knn_accuracy_separable_and_dino_loss_floor():
    from training.ssl import dino_loss, knn_accuracy

    centers = torch.eye(10, 16) * 5
    train_y, test_y = torch.arange(10).repeat(20), torch.arange(10).repeat(5)
    train_x = centers[train_y] + 0.1 * torch.randn(200, 16)
    test_x = centers[test_y] + 0.1 * torch.randn(50, 16)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, test_y.roll(1), k=5) == 0.0
    flat = [torch.zeros(4, 32)] * 2
    torch.testing.assert_close(dino_loss(flat, flat, torch.zeros(1, 32)), torch.tensor(32.0).log())


def test_mnist_loader_shapes_and_range():
    images, labels = load_mnist(MNIST_PATH, "test").tensors
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1 and labels.max() == 9
    with pytest.raises(ValueError, match="split"):
        load_mnist(MNIST_PATH, "val")
