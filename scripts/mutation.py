"""Mutation testing of the core modules with cosmic-ray: which small deliberate bugs do our tests NOT catch?

Each target is a source file (optionally only some of its functions/classes) and the tests that must catch bugs in
it. The script copies the tracked tree to a scratch directory (your checkout is never modified), lets cosmic-ray
mutate the target there one mutation at a time and run the tests, and writes one CSV row per surviving mutant to
``benchmarks/mutation_survivors.csv`` plus the kill rate per target to ``benchmarks/mutation_summary.csv``.

Survivors need a human verdict: the ``explanation`` column says why a survivor is acceptable (an equivalent mutant,
a log message, a bound that only changes a retry hint, ...) or what test is missing. Explanations already in the
CSV are carried over to a new run for the same mutant (same target, line, operator and diff), so reruns keep them.

Not part of CI (too slow: every mutant is one pytest run). Run it on an idle machine, e.g.::

    nice -n 19 python scripts/mutation.py --target scheduler --target guidance
    nice -n 19 python scripts/mutation.py --all            # every target (hours on 2 CPU cores)
    python scripts/mutation.py --list                      # the targets and their tests

Needs ``cosmic-ray`` (the ``dev`` extra). Docs: docs/testing.md.
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SURVIVORS_CSV = REPO / "benchmarks" / "mutation_survivors.csv"
SUMMARY_CSV = REPO / "benchmarks" / "mutation_summary.csv"


@dataclass(frozen=True)
class Target:
    """A file to mutate, the functions/classes in it that count (empty: the whole file) and the tests to run."""

    path: str
    tests: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()


SERVER_HTTP_TESTS = ("tests/server/test_http.py", "tests/server/test_bad_bodies.py",
                     "tests/server/test_class_sensitive.py")
TARGETS: dict[str, Target] = {
    # The policy (admission, drops, finishing, counters); not the constructor's argument checks or the Retry-After
    # estimate. --noconftest: these tests need no fixture, and skipping the root conftest avoids importing torch
    # (seconds per mutant).
    "scheduler": Target("server/scheduler.py", ("tests/server/test_scheduler.py",
                                                "tests/server/test_scheduler_properties.py"),
                        tuple(f"Scheduler.{m}" for m in ("submit", "cancel", "finish", "update", "plan",
                                                          "_drop_locked", "_admit_locked", "_batch_ready_locked",
                                                          "_wait_hint_locked", "queue_depth", "inflight",
                                                          "running_cost")), ("--noconftest",)),
    # The guidance and step maths of the sampler (the rest of svg/sampling.py is seeds and validation).
    # The guidance, solver-update and edit re-impose maths (the rest of svg/sampling.py is validation, seeds and the
    # batching loop, covered by the "sampling" target).
    "guidance": Target("svg/sampling.py", ("tests/svg/test_sampling_ode.py",),
                       ("shift_time", "Guidance.scale_at", "Guidance.zero_init_active", "Trajectory._coefficients",
                        "Trajectory._commit", "Trajectory._reimpose", "_cfg")),
    "sampling": Target("svg/sampling.py", ("tests/svg/test_sampling_ode.py", "tests/svg/test_sampling.py",
                                           "tests/svg/test_editing.py")),
    "editing": Target("svg/editing.py", ("tests/svg/test_sampling_ode.py", "tests/svg/test_editing.py")),
    "worker": Target("server/worker.py", ("tests/server/test_worker.py", "tests/server/test_class_sensitive.py",
                                          "tests/server/test_http.py")),
    "http_params": Target("server/routes.py", SERVER_HTTP_TESTS, ("_guidance", "_solver", "_check_classes",
                                                                  "generate", "edit", "interpolate")),
    "schemas": Target("server/schemas.py", SERVER_HTTP_TESTS),
}

FIELDS = ["target", "path", "line", "scope", "operator", "occurrence", "outcome", "diff", "explanation"]


def scope_lines(source: str, scopes: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of the functions/classes named in ``scopes``: top-level names or
    ``Class.method``."""
    spans = []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in ast.parse(source).body:
        if not isinstance(node, defs):
            continue
        members = [(node.name, node)] + [(f"{node.name}.{m.name}", m) for m in getattr(node, "body", [])
                                         if isinstance(node, ast.ClassDef) and isinstance(m, defs)]
        for name, sub in members:
            if name in scopes:
                first = min([sub.lineno] + [d.lineno for d in sub.decorator_list])
                spans.append((first, sub.end_lineno, name))
    return spans


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((line, col), (end line, end col)) of every type annotation. With ``from __future__ import annotations``
    they are never evaluated, so mutating them (``float | None`` -> ``float + None``) is an equivalent mutant."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            notes = [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                     if x is not None and x.annotation is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes if n is not None]
    return spans


def scope_of(line: int, spans: list[tuple[int, int, str]]) -> str | None:
    for first, last, name in spans:
        if first <= line <= last:
            return name
    return None


def copy_tree(dst: Path) -> None:
    """The tracked files (plus untracked, non-ignored ones) of this checkout, without .git or build products."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    shared = REPO.parent / "shared"  # tests find ../shared next to the checkout
    if shared.exists() and not (dst.parent / "shared").exists():
        (dst.parent / "shared").symlink_to(shared)


def run_target(name: str, target: Target, work: Path, timeout_s: float, sample: int | None = None) -> list[dict]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    tree = work / name / "repo"
    tree.mkdir(parents=True)
    copy_tree(tree)
    python = sys.executable
    tests = " ".join(target.pytest_args + target.tests)
    config = tree / "cosmic-ray.toml"
    # -x: the first failing test kills the mutant; -p no:cacheprovider: no .pytest_cache writes between mutants.
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.path}"\n'
        f"timeout = {timeout_s}\n"
        "excluded-modules = []\n"
        f'test-command = "{python} -m pytest -x -q -p no:cacheprovider -p no:randomly {tests}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n')
    session = tree / "session.sqlite"
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    subprocess.run([python, "-m", "cosmic_ray.cli", "init", str(config), str(session)], cwd=tree, env=env,
                   check=True)

    source = (tree / target.path).read_text()
    spans = scope_lines(source, target.scopes) if target.scopes else []
    notes = annotation_spans(source) if "from __future__ import annotations" in source else []
    with use_db(str(session), WorkDB.Mode.open) as db:
        skipped = annotations = 0
        for item in list(db.pending_work_items):
            pos = tuple(item.mutations[0].start_pos)
            if spans and scope_of(pos[0], spans) is None:
                skipped += 1
            elif any(a <= pos <= b for a, b in notes):
                annotations += 1
            else:
                continue
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        pending = db.num_work_items - skipped - annotations
        if sample is not None and pending > sample:
            # A seeded random subset, so that a short run still spreads over every operator and line.
            items = [it for it in db.pending_work_items]
            keep = {it.job_id for it in random.Random(0).sample(items, sample)}
            for it in items:
                if it.job_id not in keep:
                    db.set_result(it.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
            print(f"[{name}] sampling {sample} of {pending} mutants (--sample)", flush=True)
            pending = sample
    print(f"[{name}] {pending} mutants to run ({skipped} outside {target.scopes or 'the file'}, {annotations} in "
          f"type annotations, which are never evaluated)", flush=True)
    t0 = time.monotonic()
    subprocess.run([python, "-m", "cosmic_ray.cli", "exec", str(config), str(session)], cwd=tree, env=env,
                   check=True)
    print(f"[{name}] done in {time.monotonic() - t0:.0f} s", flush=True)
    return collect(name, target, tree)


def collect(name: str, target: Target, tree: Path) -> list[dict]:
    """Rows of every mutant that ran in the session under ``tree`` (also for a run that was stopped early)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome

    spans = scope_lines((tree / target.path).read_text(), target.scopes) if target.scopes else []
    rows = []
    with use_db(str(tree / "session.sqlite"), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            mutation = item.mutations[0]
            if result.worker_outcome != WorkerOutcome.NORMAL:
                outcome = str(result.worker_outcome.value)  # exception / abnormal (a timeout counts as killed)
            else:
                outcome = str(result.test_outcome.value)  # killed / survived / incompetent
            rows.append({
                "target": name, "path": target.path, "line": mutation.start_pos[0],
                "scope": scope_of(mutation.start_pos[0], spans) if spans else "",
                "operator": mutation.operator_name, "occurrence": mutation.occurrence, "outcome": outcome,
                "diff": _short_diff(result.diff or ""), "explanation": ""})
    return rows


def _short_diff(diff: str) -> str:
    """The changed lines of a unified diff, '-old | +new', for one CSV cell."""
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return " | ".join(ln.strip() for ln in lines)[:300]


def _key(row: dict) -> tuple:
    return row["target"], row["path"], str(row["line"]), row["operator"], row["diff"]


def write_results(rows: list[dict], targets: list[str], sample: int | None = None) -> None:
    explanations = {}
    kept: list[dict] = []
    if SURVIVORS_CSV.exists():
        with SURVIVORS_CSV.open() as f:
            for old in csv.DictReader(f):
                explanations[_key(old)] = old["explanation"]
                if old["target"] not in targets:
                    kept.append(old)  # survivors of targets not rerun now stay as they were
    survivors = [r for r in rows if r["outcome"] == "survived"]
    for r in survivors:
        r["explanation"] = explanations.get(_key(r), "")
    SURVIVORS_CSV.parent.mkdir(exist_ok=True)
    with SURVIVORS_CSV.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(sorted(kept + survivors, key=lambda r: (r["target"], int(r["line"]), r["operator"])))

    summary = {}
    if SUMMARY_CSV.exists():
        with SUMMARY_CSV.open() as f:
            summary = {r["target"]: r for r in csv.DictReader(f)}
    for name in targets:
        mine = [r for r in rows if r["target"] == name]
        # Incompetent mutants (the mutated module does not even import) say nothing about the tests: left out.
        counted = [r for r in mine if r["outcome"] != "incompetent"]
        killed = sum(1 for r in counted if r["outcome"] != "survived")
        summary[name] = {"target": name, "path": TARGETS[name].path, "scopes": " ".join(TARGETS[name].scopes),
                         "mutants": len(counted), "killed": killed, "survived": len(counted) - killed,
                         "kill_rate": f"{killed / max(1, len(counted)):.3f}",
                         "sampled": "all" if sample is None else f"random {sample}", "date": time.strftime("%Y-%m-%d")}
    with SUMMARY_CSV.open("w", newline="") as f:
        w = csv.DictWriter(f, ["target", "path", "scopes", "mutants", "killed", "survived", "kill_rate", "sampled",
                               "date"])
        w.writeheader()
        w.writerows(summary[k] for k in sorted(summary))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/mutation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", choices=sorted(TARGETS), help="target to mutate (repeatable)")
    p.add_argument("--all", action="store_true", help="every target")
    p.add_argument("--list", action="store_true", help="print the targets and exit")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run (then: killed)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    p.add_argument("--sample", type=int, help="run only this many mutants per target, a seeded random subset")
    p.add_argument("--collect", type=Path, metavar="DIR",
                   help="write the CSVs from a kept scratch directory (e.g. of a run stopped early) instead")
    a = p.parse_args(argv)
    if a.list:
        for name, t in TARGETS.items():
            print(f"{name:12s} {t.path} {list(t.scopes) or ''}\n{'':12s} tests: {' '.join(t.tests)}")
        return 0
    names = sorted(TARGETS) if a.all else (a.target or [])
    if not names:
        p.error("give --target NAME (repeatable), --all or --list")
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        p.error("cosmic-ray is not installed: pip install -e '.[dev]'")
    if a.collect is not None:
        rows = [r for name in names for r in collect(name, TARGETS[name], a.collect / name / "repo")]
        write_results(rows, names)
        with SUMMARY_CSV.open() as f:
            print(f.read())
        return 0
    work = Path(tempfile.mkdtemp(prefix="svg-mutation-"))
    try:
        rows = []
        for name in names:
            rows += run_target(name, TARGETS[name], work, a.timeout, a.sample)
        write_results(rows, names, a.sample)
    finally:
        if a.keep:
            print(f"scratch kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    with SUMMARY_CSV.open() as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
