"""The daemon as systemd runs it: notify messages, SIGHUP reload, SIGTERM drain, /healthz and /metrics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import dcmtk, echoscu, free_port, peer_env, storescu, storescu_command

LOOPBACK = "127.0.0.1"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_daemon_tells_systemd_it_is_ready_and_stopping(tmp_path):
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(30)
    node = NodeProcess(tmp_path / "node")
    node.extra_env = {"NOTIFY_SOCKET": str(sock_path)}
    try:
        node.start()
        messages = [listener.recv(4096).decode()]
        assert "READY=1" in messages[0]
        node.signal(signal.SIGTERM)
        messages.append(listener.recv(4096).decode())
        assert "STOPPING=1" in messages[-1]
        assert node.wait() == 0
    finally:
        node.kill()
        listener.close()


def test_sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one(tmp_path):
    node = NodeProcess(tmp_path / "node")
    with node:
        assert echoscu(LOOPBACK, node.port, "DICOMNODE", calling_ae="ECHOSCU")
        data = yaml.safe_load(node.config_path.read_text())
        data["security"] = {"allowed_calling_aes": ["ONLYME"]}
        node.config_path.write_text(yaml.safe_dump(data))
        node.signal(signal.SIGHUP)
        wait_for(lambda: "Configuration reloaded" in node.log(), what="reload")
        assert not echoscu(LOOPBACK, node.port, "DICOMNODE", calling_ae="ECHOSCU")
        assert echoscu(LOOPBACK, node.port, "DICOMNODE", calling_ae="ONLYME")

        node.config_path.write_text("node: {ae_title: DICOMNODE, port: not-a-port}\n")
        node.signal(signal.SIGHUP)
        wait_for(lambda: "Reload refused" in node.log(), what="refused reload")
        assert "At 'node.port':" in node.log()
        assert echoscu(LOOPBACK, node.port, "DICOMNODE", calling_ae="ONLYME")
        assert not echoscu(LOOPBACK, node.port, "DICOMNODE", calling_ae="ECHOSCU")


def test_sigterm_lets_a_running_association_finish_before_exiting(tmp_path):
    files = write_study(StudySpec(series=[SeriesSpec(n_slices=300, rows=64, cols=64)]), tmp_path / "src")
    node = NodeProcess(tmp_path / "node", node={"drain_timeout_s": 120})
    node.start()
    try:
        sender = subprocess.Popen(
            storescu_command(LOOPBACK, node.port, "DICOMNODE", [tmp_path / "src"]),
            env=peer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        store = node.var / "store"
        wait_for(lambda: any(store.rglob("*.dcm")), what="the first stored instance")
        node.signal(signal.SIGTERM)
        _, err = sender.communicate(timeout=300)
        assert sender.returncode == 0 and "Store Failed" not in err, err
        assert node.wait(timeout=120) == 0
        assert len(list(store.rglob("*.dcm"))) == len(files)
        assert "Storage SCP stopped (0 association(s) aborted after drain)" in node.log()
    finally:
        node.kill()


def test_healthz_is_ok_and_metrics_count_a_storescu_run(tmp_path):
    health_port = free_port()
    files = write_study(StudySpec(series=[SeriesSpec(n_slices=7)]), tmp_path / "src")
    with NodeProcess(tmp_path / "node", web={"port": health_port}) as node:
        status, body = http_get(health_port, "/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"
        _, before = http_get(health_port, "/metrics")
        assert metric(before, "dicomnode_instances_received_total") == 0
        storescu(LOOPBACK, node.port, "DICOMNODE", files, calling_ae="MODALITY1")
        _, after = http_get(health_port, "/metrics")
        assert 'dicomnode_instances_received_total{calling_ae="MODALITY1"} 7.0' in after
        assert metric(after, "dicomnode_bytes_received_total") >= sum(f.stat().st_size for f in files) * 0.9
        assert metric(after, "dicomnode_associations_total") >= 1
        assert metric(after, "dicomnode_up") == 1
        assert 'dicomnode_studies{state="receiving"} 1.0' in after


def test_healthz_turns_unhealthy_and_stores_are_refused_when_the_disk_guard_trips(tmp_path):
    health_port = free_port()
    (sent,) = write_study(StudySpec(series=[SeriesSpec(n_slices=1)]), tmp_path / "src")
    guard = {"disk_high_water_pct": 0.001, "disk_low_water_pct": 0.0005}
    with NodeProcess(tmp_path / "node", web={"port": health_port}, storage=guard) as node:
        status, body = http_get(health_port, "/healthz")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["disk"]["ok"] is False and checks["scp"]["ok"] is True
        proc = storescu(LOOPBACK, node.port, "DICOMNODE", [sent], check=False, extra_args=["-v"])
        output = proc.stdout + proc.stderr
        assert "Received Store Response (Refused: OutOfResources)" in output, output
        assert not list((node.var / "store").rglob("*.dcm"))
        assert not list((node.var / "tmp").iterdir())
        _, metrics = http_get(health_port, "/metrics")
        assert 'dicomnode_store_failures_total{status="0xA700"} 1.0' in metrics
        assert metric(metrics, "dicomnode_disk_guard_tripped") == 1
        assert "DISK GUARD TRIPPED" in node.log()


def test_echo_verb_reports_the_round_trip_to_a_configured_peer(tmp_path):
    with NodeProcess(tmp_path / "node") as node:
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["peers"] = {"self": {"ae_title": "DICOMNODE", "host": LOOPBACK, "port": node.port}}
        other = tmp_path / "client.yaml"
        cfg["node"]["port"] = free_port()
        other.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run(
            [str(Path(__file__).resolve().parents[2] / ".venv/bin/python"), "daemon.py", "--config", str(other), "echo", "self"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "C-ECHO self (DICOMNODE@127.0.0.1" in proc.stdout and "success in" in proc.stdout
    assert Path(dcmtk("echoscu")).exists()


def test_status_reports_the_listener_peers_studies_and_last_errors(tmp_path):
    files = write_study(StudySpec(series=[SeriesSpec(n_slices=2)]), tmp_path / "src")
    with NodeProcess(tmp_path / "node") as node:
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["peers"] = {"self": {"ae_title": "DICOMNODE", "host": LOOPBACK, "port": node.port},
                        "gone": {"ae_title": "GONE", "host": LOOPBACK, "port": free_port()}}
        node.config_path.write_text(yaml.safe_dump(cfg))
        storescu(LOOPBACK, node.port, "DICOMNODE", files)
        proc = subprocess.run(
            [str(Path(__file__).resolve().parents[2] / ".venv/bin/python"), "daemon.py", "--config", str(node.config_path),
             "status"],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"node DICOMNODE on 127.0.0.1:{node.port}: listening" in out
    assert "peer self DICOMNODE@127.0.0.1" in out and "reachable (" in out
    assert "peer gone GONE@127.0.0.1" in out and "NOT reachable" in out
    assert "studies: receiving 1" in out
    assert "last errors: none" in out
