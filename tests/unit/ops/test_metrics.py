"""Metrics registry: declared table, label checks, collectors and Prometheus 0.0.4 text rendering."""

from __future__ import annotations

import re
import threading

import pytest

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


def test_summary_exports_count_and_sum() -> None:
    m = Metrics(SMALL)
    m.observe("t_seconds", 1.5)
    m.observe("t_seconds", 0.25)
    assert m.count("t_seconds") == 2
    assert m.get("t_seconds") == 1.75
    assert "t_seconds_count 2\nt_seconds_sum 1.75\n" in m.render()


def test_render_is_the_exact_prometheus_text_format_sorted_by_name_then_labels() -> None:
    m = Metrics(SMALL)
    m.inc("t_requests_total", peer="b")
    m.inc("t_requests_total", 2, peer="a")
    m.set("t_up", 1)
    assert m.render() == (
        "# HELP t_requests_total Requests.\n"
        "# TYPE t_requests_total counter\n"
        't_requests_total{peer="a"} 2\n'
        't_requests_total{peer="b"} 1\n'
        "# HELP t_seconds Durations.\n"
        "# TYPE t_seconds summary\n"
        "t_seconds_count 0\n"
        "t_seconds_sum 0\n"
        "# HELP t_up Up.\n"
        "# TYPE t_up gauge\n"
        "t_up 1\n"
    )


def test_label_values_are_escaped_so_an_ae_title_cannot_break_the_format() -> None:
    m = Metrics(SMALL)
    m.inc("t_requests_total", peer='A"E\\X\nY')
    assert 't_requests_total{peer="A\\"E\\\\X\\nY"} 1\n' in m.render()


def test_unlabelled_metrics_render_zero_and_labelled_ones_render_no_sample_until_used() -> None:
    text = Metrics().render()
    assert "\ndicomnode_bytes_received_total 0\n" in text
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
    assert 'dicomnode_studies{state="done"} 7\n' in m.render()
    states["done"] = 8
    assert 'dicomnode_studies{state="done"} 8\n' in m.render()


def test_a_failing_collector_is_logged_and_the_rest_still_renders(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()

    def broken(_: Metrics) -> None:
        raise OSError("database is locked")

    m.add_collector(broken)
    m.add_collector(lambda metrics: metrics.set("dicomnode_up", 1))
    text = m.render()
    assert "\ndicomnode_up 1\n" in text
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


def test_values_render_as_integers_when_whole_and_as_special_floats_otherwise() -> None:
    m = Metrics(SMALL)
    m.set("t_up", 0.5)
    assert "\nt_up 0.5\n" in m.render()
    m.set("t_up", float("inf"))
    assert "\nt_up +Inf\n" in m.render()
    m.set("t_up", float("nan"))
    assert "\nt_up NaN\n" in m.render()
