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
