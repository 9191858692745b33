"""Every ``python -m training.X`` reports a bad argument as one argparse error line (exit 2) that names the
argument, the value and the allowed range; resuming with another preset or other settings is refused (T13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svg.config import AE_PRESETS
from tests.conftest import MNIST_PATH
from training import stage1, stage2
from training.common import ResumeError, load_checkpoint

REPO = Path(__file__).resolve().parents[2]

# (module, arguments, what the error line must contain: the flag and the value)
BAD_ARGUMENTS = [
    ("stage2", ["--steps", "-5"], ["--steps", "-5", "allowed: >= 1"]),
    ("stage2", ["--preset", "SVG-XYZ"], ["--preset", "SVG-XYZ", "allowed:"]),
    ("stage2", ["--batch-size", "0"], ["--batch-size", "0", "allowed: >= 1"]),
    ("stage2", ["--lr", "-1"], ["--lr", "-1", "allowed: > 0"]),
    ("stage2", ["--ema-decay", "2"], ["--ema-decay", "2", "allowed: [0, 1]"]),
    ("stage2", ["--workers", "-1"], ["--workers", "-1", "allowed: >= 0"]),
    ("stage2", ["--data", "/nonexistent.npz"], ["--data", "/nonexistent.npz"]),
    ("stage2", ["--model-dir", "/nonexistent"], ["--model-dir", "/nonexistent/autoencoder.safetensors"]),
    ("stage1", ["--preset", "nope"], ["--preset", "nope", "allowed:"]),
    ("stage1", ["--steps", "-1"], ["--steps", "-1", "allowed: >= 1"]),
    ("stage1", ["--lr", "-1"], ["--lr", "-1", "allowed: > 0"]),
    ("stage1", ["--encoder", "/nonexistent.pt"], ["--encoder", "/nonexistent.pt"]),
    ("evaluate", ["--steps", "0"], ["--steps", "0", "allowed:"]),
    ("evaluate", ["--guidance-scale", "-3"], ["--guidance-scale", "-3", "allowed:"]),
    ("ssl", ["--batch-size", "0"], ["--batch-size", "0", "allowed: >= 1"]),
    ("demo", ["--data", "/nonexistent.npz"], ["--data", "/nonexistent.npz"]),
]
BASE = {  # valid values for the required arguments; the bad one is appended and wins
    "stage2": ["--model-dir", "{tmp}", "--out", "{tmp}/out"],
    "stage1": ["--out", "{tmp}/out"],
    "evaluate": ["--model-dir", "{tmp}"],
    "ssl": ["--out", "{tmp}/out"],
    "demo": ["--out", "{tmp}/model", "--runs", "{tmp}/runs"],
}


@pytest.mark.parametrize("module,args,expected", BAD_ARGUMENTS,
                         ids=[f"{m}{' '.join(a)}" for m, a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_parser_error_line(tmp_path, module, args, expected):
    data = tmp_path / "mnist.npz"
    data.touch()  # only its existence is checked before the bad argument is reported
    base = [x.format(tmp=tmp_path) for x in BASE[module]]
    cmd = [sys.executable, "-m", f"training.{module}", "--data", str(data), *base, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.startswith(f"python -m training.{module}: error: argument {expected[0]}"), line
    for part in expected[1:]:
        assert part in line, line


# ------------------------------------------------------------------------------------------------------ resume
needs_mnist = pytest.mark.mnist  # fails in CI when ../shared is missing (tests/conftest.py)


def _tiny_model_dir(path: Path) -> Path:
    from svg.autoencoder import SVGAutoencoder
    from svg.latent import LatentNorm
    from training.export import export_autoencoder, export_latent_stats

    torch.manual_seed(0)
    ae = SVGAutoencoder(AE_PRESETS["tiny"])
    export_autoencoder(ae, path, {"preset": "tiny"})
    c = ae.config.dino.embed_dim + ae.config.residual.out_dim
    export_latent_stats(LatentNorm(torch.zeros(1, 1, c), torch.ones(1, 1, c)), path)
    return path


def _stage2(model_dir: Path, out: Path, *extra: str) -> None:
    stage2.main(["--data", str(MNIST_PATH), "--model-dir", str(model_dir), "--out", str(out), "--workers", "0",
                 *extra])


@needs_mnist
def test_stage2_resume_refuses_other_preset_and_settings(tmp_path, capsys):
    model_dir, out = _tiny_model_dir(tmp_path / "model"), tmp_path / "run"
    first = ["--preset", "tiny", "--steps", "1", "--batch-size", "4", "--lr", "1e-3"]
    _stage2(model_dir, out, *first)
    assert load_checkpoint(out / "stage2_last.pt")["preset"] == "tiny"
    capsys.readouterr()

    with pytest.raises(SystemExit) as e:
        _stage2(model_dir, out, "--preset", "demo", "--steps", "2", "--batch-size", "4", "--lr", "1e-3")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"the checkpoint in {out} was trained with preset tiny; this run asks for demo" in err

    with pytest.raises(SystemExit) as e:
        _stage2(model_dir, out, "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--lr", "2e-3")
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--batch-size 4 → 8" in err and "--lr 0.001 → 0.002" in err and "another --out" in err
    assert "--steps" not in err.split("error:")[1]  # the total may change on resume

    # allowed changes: more steps, another logging interval and worker count
    _stage2(model_dir, out, *first[:3], "2", *first[4:], "--log-every", "7")
    ckpt = load_checkpoint(out / "stage2_last.pt")
    assert ckpt["step"] == 2


def test_stage2_resume_with_cosine_refuses_other_steps(tmp_path):
    from tests.training.helpers import make_trainer

    make_trainer(cosine=True, steps=6).save(tmp_path / "cosine.pt")
    with pytest.raises(ResumeError, match="--steps 6 → 9"):  # the cosine schedule's length would change
        make_trainer(cosine=True, steps=9).resume(tmp_path / "cosine.pt")
    make_trainer(steps=6).save(tmp_path / "constant.pt")
    assert make_trainer(steps=9, log_every=1, ckpt_every=2, max_skips=3).resume(tmp_path / "constant.pt")


@needs_mnist
def test_stage1_resume_refuses_other_preset_and_settings(tmp_path):
    from svg.autoencoder import SVGAutoencoder

    torch.manual_seed(0)
    cfg = stage1.Stage1Config(steps=1, batch_size=4, lr=1e-3, disc_start=-1, perceptual_weight=0.0)
    out = tmp_path / "stage1"
    stage1.train_stage1(SVGAutoencoder(AE_PRESETS["tiny"]), str(MNIST_PATH), out, cfg, None, preset="tiny")

    other = stage1.Stage1Config(steps=2, batch_size=8, lr=2e-3, disc_start=-1, perceptual_weight=0.0)
    with pytest.raises(ResumeError) as e:
        stage1.train_stage1(SVGAutoencoder(AE_PRESETS["tiny"]), str(MNIST_PATH), out, other, None, preset="tiny")
    message = str(e.value)
    assert "--batch-size 4 → 8" in message and "--lr 0.001 → 0.002" in message and "--steps" not in message

    with pytest.raises(ResumeError, match="trained with preset tiny; this run asks for demo"):
        stage1.train_stage1(SVGAutoencoder(AE_PRESETS["demo"]), str(MNIST_PATH), out, cfg, None, preset="demo")
