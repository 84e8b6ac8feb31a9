"""A file system that really fills up (tmpfs, ENOSPC) while senders deliver: every C-STORE gets a status, failures
are 0xA7xx, no temp file or open delivery is left behind, and everything acknowledged is stored and indexed."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from node.app import Node
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: mounting needs root, which the test command has (it fails, not skips, without it)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _send(port: int, datasets: list[Any], statuses: list[tuple[str, int | None]], aborted: list[bool]) -> None:
    ae = AE(ae_title="FILLER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    for ds in datasets:
        rsp = assoc.send_c_store(ds)
        statuses.append((str(ds.SOPInstanceUID), int(rsp.Status) if "Status" in rsp else None))
    aborted.append(assoc.is_aborted)
    assoc.release()


@pytest.mark.parametrize("guard_pct", [100.0, 95.0], ids=["guard-off", "guard-on"])
def test_a_file_system_that_fills_up_answers_out_of_resources_and_leaves_no_debris(
    start_node: Callable[..., Node], small_fs: Path, guard_pct: float
) -> None:
    node = start_node(paths={"var": str(small_fs / "var")},
                      storage={"disk_high_water_pct": guard_pct, "disk_low_water_pct": guard_pct - 1,
                               "disk_check_interval_s": 0.1})
    study = StudySpec(series=[])
    # 512 KiB of pixels per instance: a dozen fill the file system, many fail in the middle of a dataset.
    datasets = make_series(study, SeriesSpec(n_slices=24, rows=512, cols=512))
    statuses: list[tuple[str, int | None]] = []
    aborted: list[bool] = []
    senders = [threading.Thread(target=_send, args=(node.config.node.port, datasets[i::2], statuses, aborted))
               for i in range(2)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=120)

    assert len(statuses) == len(datasets)
    assert aborted == [False, False]
    codes = {code for _, code in statuses}
    assert None not in codes, "a C-STORE got no answer"
    assert 0x0000 in codes and any(c is not None and 0xA700 <= c <= 0xA7FF for c in codes), codes
    assert codes <= {0x0000} | set(range(0xA700, 0xA800)), codes

    var = small_fs / "var"
    assert [p for p in (var / "tmp").iterdir()] == []
    wait_for(lambda: node.store.query("SELECT COUNT(*) FROM deliveries")[0][0] == 0, timeout=30,
             what="delivery records closed")
    acknowledged = {uid for uid, code in statuses if code == 0x0000}
    indexed = {uid for (uid,) in node.store.query("SELECT sop_uid FROM instances")}
    assert acknowledged == indexed
    on_disk = {p.stem for p in (var / "store").rglob("*.dcm")}
    assert on_disk == indexed  # no file without a row, no row without a file


def _store_all(port: int, datasets: list[Any]) -> list[int]:
    ae = AE(ae_title="BIGSENDER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_a_dataset_above_max_instance_mb_is_refused_and_the_next_one_stored(start_node: Callable[..., Node]) -> None:
    node = start_node(node={"max_instance_mb": 0.25})
    study = StudySpec(series=[])
    big = make_series(study, SeriesSpec(n_slices=1, rows=512, cols=512))  # 512 KiB of pixels
    small = make_series(study, SeriesSpec(n_slices=1, rows=64, cols=64))
    assert _store_all(node.config.node.port, big + small) == [0xA700, 0x0000]
    assert node.store.instance_count() == 1
    assert list(node.config.paths.tmp.iterdir()) == []


def test_the_disk_guard_is_asked_again_while_a_large_dataset_streams_in(
    start_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from node import adapters

    monkeypatch.setattr(adapters._limits, "space_check_bytes", 256 << 10)  # ask every 256 KiB instead of 32 MiB
    node = start_node()
    study = StudySpec(series=[])
    big = make_series(study, SeriesSpec(n_slices=1, rows=1024, cols=1024))  # 2 MiB of pixels
    full = threading.Event()
    real_usage = node.disk_guard._usage

    def usage(path: Path) -> tuple[int, int, int]:
        total, used, free = real_usage(path)
        return (total, total, 0) if full.is_set() else (total, used, free)

    monkeypatch.setattr(node.disk_guard, "_usage", usage)
    real_write = adapters.ChunkFile.write

    def write(self: adapters.ChunkFile, data: bytes) -> int:
        if self._written > (512 << 10):
            full.set()  # the disk fills up (another writer) while this dataset is half received
        return real_write(self, data)

    monkeypatch.setattr(adapters.ChunkFile, "write", write)
    with caplog.at_level("ERROR", logger="node.adapters"):
        assert _store_all(node.config.node.port, big) == [0xA700]
    assert any("while the dataset streamed in" in r.getMessage() for r in caplog.records)
    assert node.store.instance_count() == 0
    assert list(node.config.paths.tmp.iterdir()) == []
