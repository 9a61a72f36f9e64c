"""The example alert rules parse, are well-formed, and only use metrics meterd exports."""

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def exported_metrics():
    # Each component renders the metrics it owns (metrics.rs is only the registry): every family name is a
    # string literal passed to the encoder somewhere under agent/src.
    src = "".join(p.read_text() for p in (ROOT / "agent/src").rglob("*.rs"))
    names = set(re.findall(r'"(meterd_[a-z_]+)"', src))
    # Histograms export _bucket/_sum/_count series.
    for base in list(names):
        names |= {base + "_bucket", base + "_sum", base + "_count"}
    return names


def test_alert_rules_are_well_formed_and_use_exported_metrics():
    doc = yaml.safe_load((ROOT / "examples/prometheus/alerts.yml").read_text())
    known = exported_metrics()
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 5
    names = {r["alert"] for r in rules}
    for wanted in ["MeterdMeteringStalled", "MeterdDeadlineNear", "MeterdRecordsAtRisk", "MeterdRecordsRejected", "MeterdClockSkew", "MeterdUsageDrop"]:
        assert wanted in names
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["runbook"].startswith("docs/operations.md#")
        used = set(re.findall(r"\b(meterd_[a-z_]+)\b", r["expr"]))
        assert used, r["alert"]
        assert used <= known, f"{r['alert']} uses unknown metrics {used - known}"
        assert r["expr"].count("(") == r["expr"].count(")")
