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


def test_progress_is_a_bar_with_rate_and_eta_on_a_terminal_and_plain_lines_otherwise(capsys, caplog):
    import logging

    from training.common import Progress

    bar = Progress(10, 0, every=5, name="stage2", tty=True)
    for step in range(1, 11):
        bar(step, loss=0.5)
    bar.close()
    shown = capsys.readouterr().err
    assert "stage2" in shown and "10/10" in shown and "step/s" in shown and "loss=0.5" in shown
    caplog.clear()  # the bar phase may also log, when an earlier test left the 'training' logger at INFO
    with caplog.at_level(logging.INFO, logger="training"):
        plain = Progress(10, 0, every=5, name="stage2", tty=False)
        for step in range(1, 11):
            plain(step, loss=0.5)
    assert plain.bar is None and "10/10" not in capsys.readouterr().err  # no bar drawn
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "stage2 step 10/10 loss 0.5" in lines[1] and "steps/s" in lines[1] and "ETA" in lines[1]
