"""Load-test package: shapes, SLO arithmetic, and headless runs against a stub server (cases T25, T26)."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from loadtest.run import RunError, check_csv_files
from loadtest.shape_spec import Shape, Stage, load_shape, parse_duration
from loadtest.slo import RunStats, Thresholds, breaches, read_stats

from .stub_server import StubServer

REPO = Path(__file__).resolve().parents[2]
STUB_KEY = "stub-key-0123456789"
# The scenarios plus the data shape: what the runner loads when a shape is asked for.
SHAPED = f"{REPO / 'loadtest' / 'locustfile.py'},{REPO / 'loadtest' / 'shapefile.py'}"


def test_builtin_shapes_scale_to_duration_and_peak():
    burst = load_shape("burst")
    # 40 s run, peak 16: quarter load (4), the full burst in the middle 20 %, quarter load again, then stop.
    assert [burst.users_at(t, 40.0, 16) for t in (0.0, 15.9, 16.0, 23.9, 24.0, 39.9)] == [4, 4, 16, 16, 4, 4]
    assert burst.users_at(40.0, 40.0, 16) is None
    ramp = load_shape("ramp")
    counts = [ramp.users_at(t, 100.0, 8) for t in range(0, 100, 10)]
    assert counts == sorted(counts) and counts[0] == 2 and counts[-1] == 8
    assert load_shape("steady").users_at(0.0, 10.0, 3) == 3


def test_shape_data_is_validated_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match=r"stages\[1\].until"):
        Shape("bad", (Stage(0.5, 1.0), Stage(0.4, 1.0)))
    with pytest.raises(ValueError, match=r"stages\[0\].users = 1.5"):
        Shape("bad", (Stage(1.0, 1.5),))
    path = tmp_path / "typo.json"
    path.write_text('{"stages": [{"until": 1.0, "user": 1.0}]}')
    with pytest.raises(ValueError, match="unknown keys \\['user'\\]"):
        load_shape(str(path))
    with pytest.raises(ValueError, match="not a built-in shape"):
        load_shape("spiky")
    assert parse_duration("1h30m") == 5400.0 and parse_duration("20s") == 20.0 and parse_duration("90") == 90.0
    with pytest.raises(ValueError, match="duration"):
        parse_duration("20x")


def test_slo_breaches_name_the_threshold():
    stats = RunStats(requests=200, failures=10, requests_per_s=5.0, p50_ms=100, p95_ms=900, p99_ms=2500)
    assert breaches(stats, Thresholds(max_fail_ratio=0.10, max_p99_ms=3000)) == []
    assert breaches(stats, Thresholds(max_fail_ratio=0.01, max_p99_ms=3000)) == ["failure ratio 5.00% > 1.00%"]
    assert breaches(stats, Thresholds(max_fail_ratio=0.10, max_p99_ms=2000)) == ["p99 2500 ms > 2000 ms"]
    empty = RunStats(requests=0, failures=0, requests_per_s=0, p50_ms=0, p95_ms=0, p99_ms=0)
    assert breaches(empty, Thresholds()) == ["no request completed"]
    with pytest.raises(ValueError, match="max_fail_ratio = 1.5"):
        Thresholds(max_fail_ratio=1.5)


def test_missing_or_empty_csv_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="did not write"):
        check_csv_files(tmp_path)
    for kind in ("stats", "failures", "stats_history"):
        (tmp_path / f"locust_{kind}.csv").write_text("Type,Name\n")
    with pytest.raises(RunError, match="locust_stats.csv has 1 lines"):
        check_csv_files(tmp_path)


def _run(url: str, out: Path, max_fail_ratio: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "SVG_LOADTEST_API_KEY": STUB_KEY}
    command = [
        sys.executable, "-m", "loadtest.run", "--url", url, "--ready-path", "/models", "--duration", "8s",
        "--users", "4", "--shape", "steady", "--max-steps", "2", "--image-size", "32",
        "--max-fail-ratio", str(max_fail_ratio), "--out", str(out),
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_exit_code_follows_the_fail_ratio_threshold_and_csv_is_written(tmp_path):
    """T25 + T26: 5 % of /generate fail; threshold 1 % -> exit 1, threshold 10 % -> exit 0; CSVs non-empty. The
    stub wants a bearer token, which the runner and the locustfile take from SVG_LOADTEST_API_KEY."""
    with StubServer(fail_every=20, api_key=STUB_KEY) as url:
        strict = _run(url, tmp_path / "strict", 0.01)
        lenient = _run(url, tmp_path / "lenient", 0.10)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "FAIL (failure ratio" in strict.stdout
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "-> PASS" in lenient.stdout
    # The locustfile's own quitting hook reached the same verdict (a plain `locust` run exits by the SLO too).
    assert "SLO breached: failure ratio" in (tmp_path / "strict" / "locust.log").read_text()
    assert "SLO breached" not in (tmp_path / "lenient" / "locust.log").read_text()
    for out in (tmp_path / "strict", tmp_path / "lenient"):
        check_csv_files(out)  # stats, failures, stats_history: header + data rows (T26)
        stats = read_stats(out / "locust_stats.csv")
        assert stats.per_endpoint["POST /generate"]["failures"] >= 1
        assert stats.failures == stats.per_endpoint["POST /generate"]["failures"]  # no 401 anywhere
        assert {"POST /encode", "POST /edit", "POST /interpolate"} <= set(stats.per_endpoint)
        assert (out / "report.html").stat().st_size > 1000
        assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out / "summary.csv", newline="") as handle:
            (row,) = list(csv.DictReader(handle))
        assert int(row["requests"]) == stats.requests and row["shape"] == "steady"


def test_unreachable_server_is_a_run_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--url", "http://127.0.0.1:9", "--ready-timeout", "1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "did not answer 200" in result.stderr


def test_loadtest_imports_nothing_from_the_repository():
    import ast

    ours = {"svg", "server", "kernels", "engines", "training", "ops", "tests"}
    for path in (REPO / "loadtest").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in ours, f"{path.name} imports {name}"


def documented_command(prefix: str) -> tuple[dict[str, str], list[str]]:
    """The first command line in docs/operations.md that starts with ``prefix``: its leading ``VAR=value``
    assignments and its words, split like a shell."""
    for line in (REPO / "docs" / "operations.md").read_text().splitlines():
        if line.startswith(prefix):
            words = shlex.split(line)
            env = {}
            while "=" in words[0] and not words[0].startswith("-"):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            return env, words
    raise AssertionError(f"docs/operations.md has no command starting with {prefix!r}")


DEMO_DIR = REPO / "models" / "demo"
DEMO_FILES = ("sit.safetensors", "autoencoder.safetensors", "latent_stats.safetensors")


def smoke_model_dir(request) -> tuple[Path, str]:
    """The model of the CI smoke run: the trained demo in models/demo when its three files are there, else the tiny
    RANDOM model (said in a warning, so it shows in pytest's summary). Returns (directory, what it is)."""
    missing = [name for name in DEMO_FILES if not (DEMO_DIR / name).is_file()]
    if not missing:
        return DEMO_DIR, "demo model (models/demo)"
    reason = f"models/demo lacks {', '.join(missing)}: the smoke load test runs on the tiny RANDOM model instead"
    warnings.warn(reason, stacklevel=2)
    sys.stderr.write(reason + "\n")
    return request.getfixturevalue("tiny_model_dir"), "tiny RANDOM model (fallback)"


def test_smoke_load_test_against_the_demo_model_meets_its_slo(request, tmp_path):
    """The CI smoke run, exactly as documented: 20 s, 4 users, the runner starts the server itself on the demo model
    (10 classes, 32 px; the locustfile takes the class count from GET /models). Only the port and the output folder
    are swapped for temporary ones, and the model folder too when the demo is not there (tiny random model)."""
    from .conftest import free_port

    model_dir, model_name = smoke_model_dir(request)
    port = str(free_port())
    out = tmp_path / "smoke"
    svg_serve = str(Path(sys.executable).parent / "svg-serve")  # the console script of this environment
    env, command = documented_command("OMP_NUM_THREADS=1 python -m loadtest.run --start-server")
    command[0] = sys.executable
    start_server = command.index("--start-server") + 1
    assert "--model-dir models/demo " in command[start_server]
    command[start_server] = (command[start_server].replace("svg-serve", svg_serve, 1)
                             .replace("models/demo", str(model_dir)).replace("8000", port))
    command[command.index("--url") + 1] = f"http://127.0.0.1:{port}"
    command[command.index("--out") + 1] = str(out)
    assert command[command.index("--duration") + 1] == "20s"
    assert command[command.index("--image-size") + 1] == "32"  # the demo's (and tiny model's) image side
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=400)
    log = result.stdout + result.stderr + (out / "locust.log").read_text()[-3000:]
    assert result.returncode == 0, f"{model_name}: {log}"
    stats = read_stats(out / "locust_stats.csv")
    assert stats.requests >= 10 and stats.failures == 0, f"{model_name}: {log}"
    assert {"POST /generate", "POST /encode", "POST /edit", "POST /interpolate"} <= set(stats.per_endpoint)
    assert (out / "server.log").stat().st_size > 0  # the runner kept the server log
    sys.stdout.write(f"smoke load test ran on the {model_name}: {stats.requests} requests\n")


def test_plain_locust_with_our_shape_writes_csv_and_exits_by_the_slo(tmp_path):
    """T26 literally: `locust --headless --csv` with our shape class writes all three CSV files; and T25: with 20 %
    of /generate failing (~10 % of all requests) under a 50 % threshold the exit code is 0, where Locust alone would
    exit 1 on the first failure. (Loose numbers, so that a short, slow run cannot cross them by chance.)"""
    with StubServer(fail_every=5) as url:
        command = [
            sys.executable, "-m", "locust", "-f", SHAPED, "--headless",
            "--host", url, "--shape-name", "steady", "--shape-users", "4", "--shape-duration", "8s",
            "--max-steps", "2", "--image-size", "32", "--slo-max-fail-ratio", "0.5",
            "--csv", str(tmp_path / "out"), "--csv-full-history", "--only-summary",
        ]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    check_csv_files(tmp_path, prefix="out")
    stats = read_stats(tmp_path / "out_stats.csv")
    assert stats.failures >= 1 and stats.fail_ratio < 0.5


def test_users_take_class_labels_and_upload_size_from_the_model(tmp_path):
    """Without --image-size the uploads are the model's image_size (GET /models), and class labels stay below its
    num_classes (the demo: 10 classes, 32 px)."""
    stub = StubServer(num_classes=10, image_size=48)
    with stub as url:
        command = [
            sys.executable, "-m", "locust", "-f", SHAPED, "--headless",
            "--host", url, "--shape-name", "steady", "--shape-users", "2", "--shape-duration", "6s",
            "--max-steps", "2", "--only-summary",
        ]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert stub.httpd.upload_sizes == {(48, 48)}
    assert stub.httpd.generate_classes and max(stub.httpd.generate_classes) < 10


def test_plain_locust_honours_users_spawn_rate_and_run_time(tmp_path):
    """`locust -f loadtest/locustfile.py --headless -u N -r R -t T` must run N users for T seconds; it used to run the
    file's built-in 20-second, 4-user shape, with only a warning that -u/-r/-t were ignored."""
    import time

    with StubServer() as url:
        command = [
            sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
            "--host", url, "-u", "3", "-r", "3", "-t", "5s", "--max-steps", "2", "--image-size", "32",
            "--csv", str(tmp_path / "out"), "--csv-full-history", "--only-summary",
        ]
        start = time.monotonic()
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ignored" not in result.stderr.lower(), result.stderr[-2000:]
    with open(tmp_path / "out_stats_history.csv", newline="") as handle:
        users = {int(row["User Count"]) for row in csv.DictReader(handle)}
    assert max(users) == 3, users  # -u 3, not the shape's 4
    assert seconds < 18, seconds  # -t 5s (+ start-up and stop), not the shape's 20 s
