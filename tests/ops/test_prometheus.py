"""Prometheus config and alert rules: promtool checks, rule unit tests, PromQL lint (cases T27, T28)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "ops" / "prometheus"
BAD_RULES = Path(__file__).resolve().parent / "data" / "bad_rules.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install -y prometheus")

# T27: rate() over the buckets first, then sum keeping `le` (optionally more labels), then the quantile.
QUANTILE_FORM = re.compile(
    r"histogram_quantile\(\s*0?\.\d+\s*,\s*sum by \(le(, [a-z_]+)*\) "
    r"\(rate\(svg_[a-z_]+_bucket(\{[^}]*\})?\[5m\]\)\)\)"
)


def _promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_config_and_rules_pass():
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "6 rules found" in rules.stdout


@needs_promtool
def test_promtool_rejects_the_known_bad_rules_fixture():
    """T28: an annotation indented as a rule field must fail `promtool check rules`."""
    result = _promtool("check", "rules", str(BAD_RULES))
    assert result.returncode != 0
    assert "field summary not found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_fail_when_le_is_dropped(tmp_path):
    """T27: the same unit tests catch a quantile that sums away `le`."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM_DIR / name, tmp_path / name)
    rules = (tmp_path / "alerts.yml").read_text()
    broken = rules.replace("sum by (le, instance, endpoint)", "sum by (instance, endpoint)")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "SVGHighLatencyP99" in result.stdout + result.stderr


def _all_exprs() -> list[str]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_every_histogram_quantile_rates_buckets_and_keeps_le():
    """T27 lint: every quantile in the rules and the dashboard has the rate-then-sum-by-le form."""
    dashboard = json.loads((REPO / "ops" / "grafana" / "dashboards" / "svg.json").read_text())
    texts = _all_exprs() + [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    found = 0
    for text in texts:
        for match in re.finditer(r"histogram_quantile\(", text):
            snippet = text[match.start():match.start() + 300]
            assert QUANTILE_FORM.match(snippet), f"quantile not in the rate/sum by (le) form: {snippet[:160]}"
            found += 1
    assert found >= 4
    assert not QUANTILE_FORM.match("histogram_quantile(0.99, sum by (instance) (rate(svg_x_seconds_bucket[5m])))")
    assert not QUANTILE_FORM.match("histogram_quantile(0.99, rate(svg_x_seconds_bucket[5m]))")
    assert not QUANTILE_FORM.match("histogram_quantile(0.99, sum by (le) (svg_x_seconds_bucket))")


def test_alert_rules_cover_the_required_conditions():
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {"SVGHighLatencyP99", "SVGQueueSaturated", "SVGHigh5xxRate", "SVGNoReadyReplica"} <= names
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "warn"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_scrape_config_targets_the_server_metrics_path():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "svg"]
    assert job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]
