"""Processing on a Dask LocalCluster (2 worker processes): every study processed exactly once, with outputs
identical to the local pool's, and a worker killed mid-task costs nothing but time."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from node.app import Node
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.peers import storescu

pytestmark = pytest.mark.integration

STUDIES = 20
OUTPUTS = {"outputs": ["nifti"], "rescan_interval_s": 0.5}
NIFTI = {"compress": False}  # gzip would stamp each file with its write time


def make_studies(root: Path) -> list[tuple[StudySpec, list[Path]]]:
    out = []
    for i in range(STUDIES):
        spec = StudySpec(patient_id=f"DASK{i:02d}", accession=f"DASKACC{i:02d}",
                         series=[SeriesSpec(n_slices=6, rows=48, cols=48, series_description=f"series {i}")])
        out.append((spec, write_study(spec, root / f"s{i}")))
    return out


def done_studies(node: Node) -> int:
    return int(node.store.query("SELECT COUNT(*) FROM studies WHERE state='done'")[0][0])


def output_checksums(node: Node) -> dict[str, dict[str, str]]:
    """study UID -> {output path: sha256} from each published manifest (the manifest itself excluded)."""
    sums = {}
    for manifest in node.config.paths.outbox.glob("*/manifest.json"):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        sums[data["study_uid"]] = {o["path"]: o["sha256"] for o in data["outputs"]}
    return sums


def manifests(node: Node) -> list[dict[str, object]]:
    return [json.loads(m.read_text(encoding="utf-8")) for m in node.config.paths.outbox.glob("*/manifest.json")]


def send_all(node: Node, studies: list[tuple[StudySpec, list[Path]]]) -> None:
    storescu("127.0.0.1", node.config.node.port, "DICOMNODE", [f for _, files in studies for f in files])


def test_twenty_studies_on_a_dask_cluster_are_processed_once_with_the_local_pools_outputs(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    studies = make_studies(tmp_path / "src")
    completion = {"stable_age_s": 0.5, "check_interval_s": 0.1}
    local = start_node(completion=completion, processing={**OUTPUTS, "workers": 2}, nifti=NIFTI)
    send_all(local, studies)
    wait_for(lambda: done_studies(local) == STUDIES, 300, "the local pool to process every study")
    dask = start_node(completion=completion, processing={**OUTPUTS, "workers": 2, "executor": "dask"}, nifti=NIFTI)
    send_all(dask, studies)
    wait_for(lambda: done_studies(dask) == STUDIES, 300, "the Dask cluster to process every study")
    assert all(m["version"] == 1 for m in manifests(dask)) and len(manifests(dask)) == STUDIES
    assert output_checksums(dask) == output_checksums(local)
    assert all(sums for sums in output_checksums(dask).values())


def dask_workers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            found.append(child)
    return found


def test_a_dask_worker_killed_mid_task_still_leaves_every_study_published_once(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    studies = make_studies(tmp_path / "src")
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1},
                      processing={**OUTPUTS, "workers": 2, "executor": "dask"}, nifti=NIFTI)
    killed: list[int] = []

    def kill_one_while_processing() -> None:
        def processing() -> bool:
            return bool(node.store.query("SELECT 1 FROM studies WHERE state='processing'"))

        wait_for(processing, 120, "a study in processing")
        victims = [p for p in dask_workers() if p.cpu_percent(interval=0.05) > 0] or dask_workers()
        victims[-1].kill()
        killed.append(victims[-1].pid)

    killer = threading.Thread(target=kill_one_while_processing, daemon=True)
    killer.start()
    send_all(node, studies)
    killer.join(timeout=130)
    assert killed, "no worker was killed"
    wait_for(lambda: done_studies(node) == STUDIES, 300, "every study after the worker's death")
    found = manifests(node)
    assert len(found) == STUDIES
    assert sorted(str(m["study_uid"]) for m in found) == sorted(s.study_uid for s, _ in studies)
    assert all(m["version"] == 1 for m in found)
    assert node.store.query("SELECT COUNT(*) FROM studies WHERE state<>'done'") == [(0,)]
