"""`daemon.py cancel` beside a running daemon: the node sees the cancellation and finishes the request as failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.waiting import wait_for
from toolkit.nodeproc import REPO, NodeProcess


def test_a_queued_request_cancelled_from_the_command_line_ends_failed_with_who_cancelled(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "node", requests={"settle_s": 0.2, "rescan_interval_s": 1}) as node:
        inbox = Path(node.data["paths"]["inbox"])
        (inbox / "later.yaml").write_text("studies:\n  - accession: LATER1\nnot_before: 2099-01-01T00:00\n")
        status = Path(node.data["paths"]["outbox"]) / "requests" / "later.status.yaml"

        def state() -> str | None:
            if not status.exists():
                return None
            return str((yaml.safe_load(status.read_text().split("\n", 1)[1]) or {}).get("state"))

        assert wait_for(lambda: state() == "queued", timeout=30, what="the request to be queued")
        run = subprocess.run([sys.executable, str(REPO / "daemon.py"), "--config", str(node.config_path), "cancel",
                              "later"], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert wait_for(lambda: state() == "failed", timeout=30, what="the running node to finish the cancelled request")
        doc = yaml.safe_load(status.read_text().split("\n", 1)[1])
        assert doc["reason"].startswith("cancelled by ") and "(command line)" in doc["reason"]
        assert (inbox / "failed" / "later.yaml").exists()
        again = subprocess.run([sys.executable, str(REPO / "daemon.py"), "--config", str(node.config_path), "cancel",
                                "later"], capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 1 and "nothing to cancel" in again.stderr
