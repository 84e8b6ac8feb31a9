"""The request lifecycle SIGKILLed at each step that spans the database and the file system (failpoints), then
restarted: every request ends exactly once in done/ with its final status file, and its study is published
once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from node import failpoints
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, write_datasets
from toolkit.nodeproc import NodeProcess
from toolkit.peers import OrthancPeer, free_port

pytestmark = pytest.mark.e2e

LOOPBACK = "127.0.0.1"


def rows(var: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{var / 'node.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("step", failpoints.STEPS)
def test_a_request_killed_at_each_step_ends_exactly_once_after_a_restart(tmp_path: Path, step: str) -> None:
    node_port = free_port()
    study = StudySpec(accession="KILLSTEP", series=[SeriesSpec(n_slices=4, rows=16, cols=16)])
    write_datasets(make_study(study), tmp_path / "pacs-files")
    orthanc = OrthancPeer(tmp_path / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", LOOPBACK, node_port)})
    with orthanc:
        orthanc.load([tmp_path / "pacs-files"])
        node = NodeProcess(
            tmp_path / "node",
            node={"port": node_port},
            peers={"pacs": {"ae_title": "PACS", "host": LOOPBACK, "port": orthanc.dicom_port, "timeout_s": 10,
                            "dimse_timeout_s": 30}},
            completion={"stable_age_s": 1, "check_interval_s": 0.2},
            requests={"settle_s": 0.2, "rescan_interval_s": 1, "backoff_base_s": 0.3},
            processing={"outputs": ["excel"], "rescan_interval_s": 0.5},
        )
        node.extra_env = {failpoints.ENV: step}
        node.start()
        inbox = Path(node.data["paths"]["inbox"])
        outbox = Path(node.data["paths"]["outbox"])
        tmp = inbox / ".pull.part"
        tmp.write_text("studies:\n  - accession: KILLSTEP\noutputs: [excel]\n")
        tmp.rename(inbox / "pull.yaml")
        assert node.proc is not None
        try:
            code = node.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            node.kill()
            raise AssertionError(f"the failpoint {step} was never reached:\n{node.log()[-4000:]}") from None
        assert code == -9, f"the node ended with {code}, not by its failpoint:\n{node.log()[-4000:]}"
        assert f"Failpoint {step}" in node.log()

        node.extra_env = {}
        node.restart()
        try:
            status_file = outbox / "requests" / "pull.status.yaml"

            def finished() -> bool:
                if not status_file.exists():
                    return False
                first = status_file.read_text(encoding="utf-8").splitlines()[0]
                return first.endswith(", final") and (inbox / "done" / "pull.yaml").exists()

            wait_for(finished, 120, f"the request to end after a kill at {step}")
            wait_for(lambda: rows(node.var, "SELECT state FROM studies") == [("done",)], 60, "the study done")
        finally:
            node.stop()

    assert rows(node.var, "SELECT name, state, file_name, file_location FROM requests") == [
        ("pull", "done", "pull.yaml", "done")]
    assert yaml.safe_load(status_file.read_text(encoding="utf-8"))["state"] == "done"
    assert [p.name for p in (inbox / "done").iterdir()] == ["pull.yaml"]
    assert list((inbox / "active").iterdir()) == [] and list((inbox / "failed").iterdir()) == []
    assert [p for p in inbox.iterdir() if p.is_file()] == []
    folders = [p for p in outbox.iterdir() if p.is_dir() and p.name != "requests"]
    assert len(folders) == 1, folders
    manifest = json.loads((folders[0] / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["study_uid"], manifest["version"], manifest["inputs"]["instances"]) == (study.study_uid, 1, 4)
    assert not list((node.var / "ready").glob("*.json"))
