"""Metrics: declared table, label checks, collectors, and prometheus_client's text rendering read back by its parser."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.ops.metrics import METRICS, Metrics, MetricSpec, MetricType

SMALL = (
    MetricSpec("t_requests_total", MetricType.COUNTER, "Requests.", ("peer",)),
    MetricSpec("t_up", MetricType.GAUGE, "Up."),
    MetricSpec("t_seconds", MetricType.SUMMARY, "Durations."),
)

# One sample line of the text format: name, optional {label="value",...}, a float.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})?'
    r" (-?[0-9.e+-]+|[+-]Inf|NaN)$"
)


def test_counters_add_up_per_label_set() -> None:
    m = Metrics()
    m.inc("dicomnode_instances_received_total", calling_ae="MODALITY1")
    m.inc("dicomnode_instances_received_total", 2, calling_ae="MODALITY1")
    m.inc("dicomnode_instances_received_total", calling_ae="PACS")
    assert m.get("dicomnode_instances_received_total", calling_ae="MODALITY1") == 3
    assert m.get("dicomnode_instances_received_total", calling_ae="PACS") == 1
    assert m.get("dicomnode_instances_received_total", calling_ae="NEVER") == 0


def test_gauges_can_be_set_and_moved_both_ways() -> None:
    m = Metrics()
    m.inc("dicomnode_associations_active")
    m.inc("dicomnode_associations_active")
    m.inc("dicomnode_associations_active", -1)
    assert m.get("dicomnode_associations_active") == 1
    m.set("dicomnode_disk_free_bytes", 123456789)
    assert m.get("dicomnode_disk_free_bytes") == 123456789


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, as Prometheus' own parser reads it."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_summary_exports_count_and_sum() -> None:
    m = Metrics(SMALL)
    m.observe("t_seconds", 1.5)
    m.observe("t_seconds", 0.25)
    assert m.count("t_seconds") == 2
    assert m.get("t_seconds") == 1.75
    got = samples(m.render())
    assert got[("t_seconds_count", ())] == 2 and got[("t_seconds_sum", ())] == 1.75


def test_render_has_help_type_and_one_sample_per_label_set() -> None:
    m = Metrics(SMALL)
    m.inc("t_requests_total", peer="b")
    m.inc("t_requests_total", 2, peer="a")
    m.set("t_up", 1)
    text = m.render()
    assert "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n" in text
    assert "# TYPE t_up gauge\n" in text and "# TYPE t_seconds summary\n" in text
    assert samples(text) == {
        ("t_requests_total", (("peer", "a"),)): 2, ("t_requests_total", (("peer", "b"),)): 1,
        ("t_up", ()): 1, ("t_seconds_count", ()): 0, ("t_seconds_sum", ()): 0}
    assert "_created" not in text


def test_label_values_are_escaped_so_an_ae_title_cannot_break_the_format() -> None:
    m = Metrics(SMALL)
    m.inc("t_requests_total", peer='A"E\\X\nY')
    assert 't_requests_total{peer="A\\"E\\\\X\\nY"} 1.0\n' in m.render()
    assert samples(m.render())[("t_requests_total", (("peer", 'A"E\\X\nY'),))] == 1


def test_unlabelled_metrics_render_zero_and_labelled_ones_render_no_sample_until_used() -> None:
    text = Metrics().render()
    assert samples(text)[("dicomnode_bytes_received_total", ())] == 0
    assert "# TYPE dicomnode_rejects_total counter\n# HELP" in text


def test_every_rendered_line_is_a_help_type_or_valid_sample_line() -> None:
    m = Metrics()
    m.inc("dicomnode_rejects_total", reason="calling AE not allowed")
    m.inc("dicomnode_moves_total", outcome="success")
    m.set("dicomnode_studies", 4, state="receiving")
    m.observe("dicomnode_processing_seconds", 12.0625)
    m.set("dicomnode_disk_free_bytes", 2.5e12)
    lines = m.render().splitlines()
    assert lines
    for line in lines:
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line


def test_default_table_declares_every_metric_the_node_reports_with_its_labels() -> None:
    declared = {spec.name: (spec.type, spec.labels) for spec in METRICS}
    c, g, s = MetricType.COUNTER, MetricType.GAUGE, MetricType.SUMMARY
    expected = {
        "dicomnode_instances_received_total": (c, ("calling_ae",)),
        "dicomnode_bytes_received_total": (c, ()),
        "dicomnode_associations_total": (c, ("result",)),
        "dicomnode_associations_active": (g, ()),
        "dicomnode_rejects_total": (c, ("reason",)),
        "dicomnode_store_failures_total": (c, ("status",)),
        "dicomnode_moves_total": (c, ("outcome",)),
        "dicomnode_requests": (g, ("state",)),
        "dicomnode_studies": (g, ("state",)),
        "dicomnode_processing_seconds": (s, ()),
        "dicomnode_disk_free_bytes": (g, ()),
        "dicomnode_disk_guard_tripped": (g, ()),
        "dicomnode_up": (g, ()),
    }
    for name, kind in expected.items():
        assert declared.get(name) == kind, name
    for spec in METRICS:
        assert spec.help.strip(), spec.name
        assert spec.name.endswith("_total") == (spec.type is c), spec.name


def test_unknown_names_and_wrong_labels_are_programming_errors() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="unknown metric 'dicomnode_nope'"):
        m.inc("dicomnode_nope")
    with pytest.raises(ValueError, match="takes labels"):
        m.inc("dicomnode_instances_received_total")
    with pytest.raises(ValueError, match="takes labels"):
        m.inc("dicomnode_bytes_received_total", calling_ae="X")
    with pytest.raises(ValueError, match="cannot decrease"):
        m.inc("dicomnode_bytes_received_total", -1)
    with pytest.raises(ValueError, match="is a counter"):
        m.set("dicomnode_bytes_received_total", 5)
    with pytest.raises(ValueError, match="is a gauge"):
        m.observe("dicomnode_up", 1.0)
    with pytest.raises(ValueError, match="declared twice"):
        Metrics((*SMALL, SMALL[0]))


def test_collectors_refresh_gauges_at_render_time() -> None:
    m = Metrics()
    states = {"receiving": 2, "done": 7}

    def study_states(metrics: Metrics) -> None:
        for state, n in states.items():
            metrics.set("dicomnode_studies", n, state=state)

    m.add_collector(study_states)
    assert samples(m.render())[("dicomnode_studies", (("state", "done"),))] == 7
    states["done"] = 8
    assert samples(m.render())[("dicomnode_studies", (("state", "done"),))] == 8


def test_a_failing_collector_is_logged_and_the_rest_still_renders(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()

    def broken(_: Metrics) -> None:
        raise OSError("database is locked")

    m.add_collector(broken)
    m.add_collector(lambda metrics: metrics.set("dicomnode_up", 1))
    assert samples(m.render())[("dicomnode_up", ())] == 1
    assert "metrics collector" in caplog.text


def test_concurrent_increments_are_not_lost() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.inc("dicomnode_instances_received_total", calling_ae="MOD")
            m.inc("dicomnode_bytes_received_total", 512)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("dicomnode_instances_received_total", calling_ae="MOD") == 16000
    assert m.get("dicomnode_bytes_received_total") == 16000 * 512


def test_special_float_values_render_as_prometheus_spells_them() -> None:
    m = Metrics(SMALL)
    m.set("t_up", 0.5)
    assert "\nt_up 0.5\n" in m.render()
    m.set("t_up", float("inf"))
    assert "\nt_up +Inf\n" in m.render()
    m.set("t_up", float("nan"))
    assert "\nt_up NaN\n" in m.render()
