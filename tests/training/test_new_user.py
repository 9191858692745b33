"""Training from a new user's chair: help that says what a command does and how long it takes, defaults that do not
depend on the current directory, and the encode CLI's argument errors (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from training.demo import DEFAULT_DATA

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env_path = {"PYTHONPATH": str(REPO)}
    import os

    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env={**os.environ, **env_path},
                          capture_output=True, text=True, timeout=120)


def test_demo_help_explains_runtime_and_small_mode(tmp_path):
    done = _run("training.demo", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "about 90 minutes" in text and "--small" in text and "about a minute" in text
    assert str(DEFAULT_DATA) in text  # an absolute default, the same from any directory
    assert DEFAULT_DATA.is_absolute()


def test_encode_cli_rejects_bad_arguments_in_one_line(tmp_path):
    done = _run("training.encode", "--data", str(tmp_path / "none.npz"), "--model-dir", str(tmp_path), "--out",
                str(tmp_path / "x.pt"), "--batch-size", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("batch_size=0 out of range; allowed: >= 1")
    done = _run("training.encode", "--data", str(tmp_path / "none.npz"), "--model-dir", str(tmp_path), "--out",
                str(tmp_path / "x.pt"))
    assert done.returncode == 2 and "MNIST file not found" in done.stderr


def test_stage1_has_log_ckpt_and_worker_flags():
    done = _run("training.stage1", "--help")
    assert all(flag in done.stdout for flag in ("--log-every", "--ckpt-every", "--workers"))
