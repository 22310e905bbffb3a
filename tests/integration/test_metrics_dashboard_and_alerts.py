"""deploy/observability holds a Grafana dashboard and Prometheus alert rules that Prometheus accepts (promtool) and
that name only metrics kagi exports (docs/metrics.md, itself generated from the registries and current)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

_METRIC = re.compile(r"\b((?:kagi|process|python)_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count")

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is missing: `apt-get install prometheus` (scripts/test.sh installs it in CI)",
)


def _dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _documented() -> set[str]:
    """Return the metric names of docs/metrics.md's generated table."""
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", METRICS_DOC.read_text(encoding="utf-8"), re.MULTILINE))


def _named_in(text: str) -> set[str]:
    """Return the metrics `text` names, a histogram's _bucket, _sum and _count series by the histogram's name."""
    documented = _documented()
    names = set()
    for name in _METRIC.findall(text):
        if name not in documented:
            name = next((name.removesuffix(s) for s in _SUFFIXES if name.removesuffix(s) in documented), name)
        names.add(name)
    return names


def test_the_metrics_reference_is_current() -> None:
    """scripts/gen_metrics_docs.py --check: docs/metrics.md lists exactly the metrics the registries hold."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_metrics_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_and_the_rules_use_only_documented_metrics() -> None:
    """Every metric a dashboard query or an alert expression names is a row of docs/metrics.md, and both use
    the business figures: certificates, CRLs, OCSP, one-time passwords, lockouts, enrollments, the outbox, the
    store and the revocation stream."""
    documented = _documented()
    assert "kagi_otp_verifications_total" in documented
    queries = "\n".join(_dashboard_queries())
    rules = ALERTS.read_text(encoding="utf-8")
    for where, text in (("dashboard", queries), ("alert rules", rules)):
        unknown = sorted(_named_in(text) - documented)
        assert not unknown, f"the {where} name metrics docs/metrics.md does not list: {unknown}"
    for figure in (
        "kagi_grpc_server_calls_total",
        "kagi_certificates_revoked_total",
        "kagi_crl_next_update_seconds",
        "kagi_ocsp_answers_total",
        "kagi_otp_verifications_total",
        "kagi_lockouts_total",
        "kagi_enrollment_steps_total",
        "kagi_outbox_oldest_age_seconds",
        "kagi_store_errors_total",
        "kagi_revocation_stream_lag_seconds",
    ):
        assert figure in _named_in(queries), figure
        assert figure in _named_in(rules), figure


@promtool
def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules deploy/observability/alerts.yml` succeeds."""
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@promtool
def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Every query of the dashboard parses as PromQL: written as recording rules (Grafana's variables given
    values) into a file that `promtool check rules` accepts."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, query in enumerate(_dashboard_queries()):
        concrete = query.replace("$__rate_interval", "5m").replace("$job", "kagi.*")
        lines += [f"      - record: kagi:dashboard_query_{number}", f"        expr: {json.dumps(concrete)}"]
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
