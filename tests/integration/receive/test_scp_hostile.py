"""Hostile and bad input against the Storage SCP: policy, bad datasets, broken transfers, hostile connections.

The dataset tests run an in-process node; the connection attacks run a daemon subprocess so its memory can be
measured, and every attack is followed by one C-ECHO that must succeed at once (no retries).
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import subprocess
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from node.app import Node
from node.dicom.validators import is_valid_uid
from node.receive.diskguard import DiskGuard
from node.receive.scp import StorageSCP
from node.store.store import dataset_offset
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, write_datasets, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import dcmtk, echoscu, peer_env, storescu, storescu_command

LOOPBACK = "127.0.0.1"
MIB = 1 << 20
MEMORY_BUDGET = 256 * MIB
A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


# ----------------------------------------------------------------- helpers


def dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def associate(port: int, calling_ae: str = "PYSCU", called_ae: str = "DICOMNODE", syntaxes: Any = None) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MRImageStorage, syntaxes or [ExplicitVRLittleEndian])
    return ae.associate(LOOPBACK, port, ae_title=called_ae)


def store_status(assoc: Association, dataset: Dataset | Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs some tests send on purpose
        rsp = assoc.send_c_store(dataset)
    assert "Status" in rsp, "no C-STORE response"
    return int(rsp.Status)


def one_dataset(**attrs: Any) -> Dataset:
    (ds,) = make_series(StudySpec(), SeriesSpec(n_slices=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, value in attrs.items():
            setattr(ds, key, value)
    return ds


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll for a state change; fail naming it if it never comes (the timeout only guards against hangs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_pdu(sock: socket.socket) -> bytes:
    head = recv_exactly(sock, 6)
    (length,) = struct.unpack(">L", head[2:])
    return head + recv_exactly(sock, length)


# ----------------------------------------------------------------- association policy


def test_a_calling_ae_not_on_the_allow_list_is_rejected_and_stores_nothing(start_node, tmp_path):
    node: Node = start_node(security={"allowed_calling_aes": ["GOODAE"]})
    port = node.config.node.port
    assert not echoscu(LOOPBACK, port, "DICOMNODE", calling_ae="BADAE")
    sent = write_study(StudySpec(series=[SeriesSpec(n_slices=3)]), tmp_path / "src")
    refused = storescu(LOOPBACK, port, "DICOMNODE", sent, calling_ae="BADAE", check=False)
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr
    assoc = associate(port, calling_ae="BADAE")
    assert assoc.is_rejected
    assert files_under(node.config.paths.store) == []
    assert node.store.instance_count() == 0
    # The same files from the allowed AE land: the refusal was the policy, not a broken node.
    assert echoscu(LOOPBACK, port, "DICOMNODE", calling_ae="GOODAE")
    storescu(LOOPBACK, port, "DICOMNODE", sent, calling_ae="GOODAE")
    assert node.store.instance_count() == 3


def test_an_association_calling_another_ae_title_is_rejected(start_node):
    node: Node = start_node()
    port = node.config.node.port
    assert not echoscu(LOOPBACK, port, "OTHER")
    assoc = associate(port, called_ae="OTHER")
    assert assoc.is_rejected
    assert echoscu(LOOPBACK, port, "DICOMNODE")
    assert node.store.instance_count() == 0


# ----------------------------------------------------------------- bad datasets


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "1.2.3.abc"),
        ("SOPInstanceUID", "../../x"),
        ("SeriesInstanceUID", "../../x"),
        ("StudyInstanceUID", "1.2.3.abc"),
    ],
)
def test_a_dataset_with_an_invalid_uid_is_refused_with_c220_and_quarantined(start_node, keyword, value):
    node: Node = start_node()
    ds, good = one_dataset(**{keyword: value}), one_dataset()
    assoc = associate(node.config.node.port)
    try:
        assert store_status(assoc, ds) == 0xC220
        # The association survives a refused instance: a good one follows on it.
        assert store_status(assoc, good) == 0x0000
    finally:
        assoc.release()
    paths = node.config.paths
    assert [p.stem for p in files_under(paths.store)] == [good.SOPInstanceUID]
    assert files_under(paths.tmp) == []
    (kept,) = paths.quarantine.glob("*.dcm")
    reason = kept.with_suffix(".reason.txt").read_text(encoding="utf-8")
    assert f"reason: {keyword}" in reason
    assert "calling_ae: PYSCU" in reason
    assert not (paths.var.parent / "x").exists() and not (paths.var / "x").exists()


def test_path_like_patient_and_series_values_are_stored_only_under_uid_folders(start_node):
    node: Node = start_node()
    ds = one_dataset(
        PatientID="../../../etc/passwd",
        SeriesDescription="../../a/b\\c\x00d\x1b[0m",
        StudyDescription="/etc/shadow",
        AccessionNumber="..",
        PatientName="../..^x",
    )
    assoc = associate(node.config.node.port)
    try:
        assert store_status(assoc, ds) == 0x0000
    finally:
        assoc.release()
    paths = node.config.paths
    (stored,) = files_under(paths.store)
    assert stored.relative_to(paths.store).parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
    for path in paths.store.rglob("*"):
        assert all(is_valid_uid(part.removesuffix(".dcm")) for part in path.relative_to(paths.store).parts), path
    root = paths.var.parent
    assert sorted(p.name for p in root.iterdir()) == ["inbox", "outbox", "var"]
    assert not list(root.rglob("passwd")) and not list(root.rglob("shadow"))
    from pydicom import dcmread

    assert dcmread(stored).PatientID == "../../../etc/passwd"  # kept verbatim inside the file, never in a path


def test_a_dataset_truncated_in_its_pixel_data_is_refused_with_c210_and_quarantined(start_node, tmp_path, monkeypatch):
    node: Node = start_node()
    (full,) = write_datasets([one_dataset()], tmp_path / "src")
    data = full.read_bytes()
    pixel_value = data.rindex(b"\xe0\x7f\x10\x00OW") + 12
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: pixel_value + (len(data) - pixel_value) // 2])
    # Send the file's bytes as they are, without decoding them (process-global flag, restored by monkeypatch).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = associate(node.config.node.port)
    try:
        assert store_status(assoc, cut) == 0xC210
    finally:
        assoc.release()
    paths = node.config.paths
    assert files_under(paths.store) == []
    assert files_under(paths.tmp) == []
    (kept,) = paths.quarantine.glob("*.dcm")
    assert dataset_bytes(kept) == dataset_bytes(cut)
    assert "truncated" in kept.with_suffix(".reason.txt").read_text(encoding="utf-8")
    assert node.store.instance_count() == 0


class SendGate:
    """Wraps an SCU association's socket send: once armed, lets `after` bytes through, then holds the DUL thread."""

    def __init__(self, assoc: Association, after: int, half_pdu: bool) -> None:
        transport: Any = assoc.dul.socket
        self.transport = transport
        self._send = transport.send
        self.after, self.half_pdu = after, half_pdu
        self.armed = False
        self.passed = 0
        self.held = threading.Event()
        self.release = threading.Event()
        transport.send = self.send

    def send(self, data: bytes) -> None:
        if self.armed and self.passed + len(data) > self.after:
            if self.half_pdu:
                self._send(data[: len(data) // 2])
            self.held.set()
            self.release.wait(60)
            return
        if self.armed:
            self.passed += len(data)
        self._send(data)


@pytest.mark.parametrize("how", ["A-ABORT between PDUs", "connection reset mid-PDU"])
def test_an_association_broken_mid_transfer_leaves_nothing_half_written_and_loses_nothing_acknowledged(start_node, caplog, how):
    caplog.set_level(logging.INFO, logger="node")
    node: Node = start_node()
    paths = node.config.paths
    small = [one_dataset() for _ in range(3)]
    (big,) = make_series(StudySpec(), SeriesSpec(n_slices=1, rows=2048, cols=2048))  # 8 MiB of pixels
    assoc = associate(node.config.node.port)
    gate = SendGate(assoc, after=3 * MIB, half_pdu=how.endswith("mid-PDU"))
    for ds in small:
        assert store_status(assoc, ds) == 0x0000
    gate.armed = True
    sender = threading.Thread(target=assoc.send_c_store, args=(big,), daemon=True)
    sender.start()
    try:
        assert gate.held.wait(60), "the big dataset never started"
        wait_until(lambda: any(p.stat().st_size >= 1 * MIB for p in files_under(paths.tmp)), "a partial dataset in var/tmp")
        raw: socket.socket = gate.transport.socket
        if how.startswith("A-ABORT"):
            raw.sendall(A_ABORT)
        else:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()  # RST with half a PDU on the wire
        wait_until(lambda: node.scp.active_associations() == 0, "the node ending the association")
        wait_until(lambda: files_under(paths.tmp) == [], "var/tmp emptied")
    finally:
        gate.release.set()
        sender.join(60)
        if assoc.is_established:
            assoc.abort()
    stored = {p.stem: p for p in files_under(paths.store)}
    assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in small)
    assert big.SOPInstanceUID not in {p.stem for p in paths.var.rglob("*")}
    assert files_under(paths.quarantine) == []
    assert node.store.instance_count() == 3
    assert "Discarded a partially received dataset" in caplog.text


def test_a_tripped_disk_guard_answers_a700_and_writes_nothing_until_it_releases(start_node):
    node: Node = start_node()
    paths = node.config.paths
    used = {"pct": 50.0}
    guard = DiskGuard(paths.var, 95.0, 90.0, interval_s=0.0, usage=lambda _p: (1000, int(used["pct"] * 10), 0))
    assert isinstance(node.scp, StorageSCP)  # one receiver, in the node's process
    node.disk_guard = node.scp.disk_guard = guard
    first, refused, still_refused, after = (one_dataset() for _ in range(4))
    assoc = associate(node.config.node.port)
    try:
        assert store_status(assoc, first) == 0x0000
        used["pct"] = 97.0
        assert store_status(assoc, refused) == 0xA700
        used["pct"] = 92.0  # below high water but above low water: still tripped (hysteresis)
        assert store_status(assoc, still_refused) == 0xA700
        assert files_under(paths.tmp) == []
        used["pct"] = 80.0
        assert store_status(assoc, after) == 0x0000
    finally:
        assoc.release()
    names = {p.stem for p in paths.var.rglob("*")}
    assert {first.SOPInstanceUID, after.SOPInstanceUID} <= names
    assert not {refused.SOPInstanceUID, still_refused.SOPInstanceUID} & names
    assert files_under(paths.tmp) == []
    assert node.store.instance_count() == 2


# ----------------------------------------------------------------- hostile connections (daemon)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("hostile"))
    proc.start()
    assert echoscu(LOOPBACK, proc.port, "DICOMNODE")
    proc.idle_rss = proc.rss()  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


def assert_healthy(daemon: NodeProcess) -> None:
    """One C-ECHO right away must succeed, and peak memory stays within budget above idle."""
    assert echoscu(LOOPBACK, daemon.port, "DICOMNODE"), daemon.log()[-3000:]
    grown = daemon.peak_rss() - daemon.idle_rss  # type: ignore[attr-defined]
    assert grown < MEMORY_BUDGET, f"peak RSS {grown / MIB:.0f} MiB above idle"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    return sock


def still_open(sock: socket.socket) -> bool:
    """True if the peer has neither closed nor reset the connection (nothing to read yet)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # a Python socket with a timeout would wait for readability first
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def stream_until_dropped(sock: socket.socket, limit: int = 256 * MIB) -> int:
    """Send zeros until the node drops the connection; return how many bytes went out before it did."""
    chunk = bytes(64 * 1024)
    sent = 0
    try:
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return sent
    except TimeoutError:
        raise AssertionError(f"the node stopped reading after {sent} bytes but kept the connection open") from None
    raise AssertionError(f"the node accepted {sent} bytes of an oversized PDU")


def test_fifty_connections_of_random_bytes_leave_echo_working_at_once(daemon):
    rng = random.Random(50)
    held = []
    for i in range(50):
        sock = connect(daemon.port)
        sock.sendall(rng.randbytes(rng.choice([1, 5, 6, 100, 4096, 65536])))
        if i % 2:
            held.append(sock)  # half stay open while the echo runs
        else:
            sock.close()
    try:
        assert_healthy(daemon)
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: daemon.log().count("Connection from 127.0.0.1 refused") >= 40, "refusals logged")


@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_a_first_pdu_declaring_four_gibibytes_is_dropped_without_buffering(daemon, pdu_type):
    with connect(daemon.port) as sock:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFFF))
        sent = stream_until_dropped(sock)
    assert sent < 64 * MIB
    assert_healthy(daemon)


def capture_associate_rq() -> bytes:
    """A genuine A-ASSOCIATE-RQ: what DCMTK echoscu sends to a listening socket of ours."""
    with socket.create_server((LOOPBACK, 0)) as listener:
        listener.settimeout(30)
        port = listener.getsockname()[1]
        cmd = [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "DICOMNODE", "-to", "5", "-ta", "5", LOOPBACK, str(port)]
        echo = subprocess.Popen(cmd, env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                rq = read_pdu(conn)
        finally:
            echo.wait(timeout=30)
    assert rq[0] == 0x01
    return rq


def test_a_p_data_pdu_declaring_four_gibibytes_inside_an_association_is_dropped_without_buffering(daemon):
    rq = capture_associate_rq()
    with connect(daemon.port) as sock:
        sock.sendall(rq)
        ac = read_pdu(sock)
        assert ac[0] == 0x02, f"expected A-ASSOCIATE-AC, got PDU type 0x{ac[0]:02X}"
        sock.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
        sent = stream_until_dropped(sock)
    assert sent < 64 * MIB
    assert_healthy(daemon)


def write_deflate_bomb(path: Path, inflated: int, label: str = DeflatedExplicitVRLittleEndian) -> Path:
    """A deflated dataset whose PixelData inflates to `inflated` bytes of zeros (a few hundred kB on disk).

    `label` is the transfer syntax the file meta claims: a liar labels deflated bytes Explicit VR Little Endian.
    """
    side = int((inflated // 2) ** 0.5)
    ds = one_dataset()
    del ds.PixelData
    ds.Rows = ds.Columns = side
    ds.file_meta.TransferSyntaxUID = UID(label)
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    n_pixel_bytes = side * side * 2
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    with path.open("wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        fh.write(deflate.compress(header.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, n_pixel_bytes)))
        zeros = bytes(4 * MIB)
        left = n_pixel_bytes
        while left:
            fh.write(deflate.compress(zeros[: min(left, len(zeros))]))
            left -= min(left, len(zeros))
        fh.write(deflate.flush())
    assert path.stat().st_size < 2 * MIB
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bomb")
    return {
        "deflated": write_deflate_bomb(folder / "bomb.dcm", 300 * MIB),
        "mislabelled": write_deflate_bomb(folder / "liar.dcm", 100 * MIB, label=ExplicitVRLittleEndian),
    }


def test_a_deflate_bomb_offered_as_deflated_is_refused_at_negotiation(daemon, bombs):
    assoc = associate(daemon.port, syntaxes=[DeflatedExplicitVRLittleEndian])
    assert not assoc.is_established  # no context accepted: the SCU gives up
    assert [cx.transfer_syntax[0] for cx in assoc.rejected_contexts] == [DeflatedExplicitVRLittleEndian]
    assert [cx.result for cx in assoc.rejected_contexts] == [0x04]  # transfer syntaxes not supported
    assert_healthy(daemon)


def test_deflated_bytes_smuggled_on_an_explicit_vr_context_are_refused_without_inflating(daemon, bombs, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    assoc = associate(daemon.port)
    try:
        status = store_status(assoc, bombs["mislabelled"])
    finally:
        assoc.release()
    assert status in (0xC210, 0xC220), hex(status)
    assert files_under(daemon.var / "store") == []
    assert_healthy(daemon)


def test_a_deflate_bomb_that_dcmtk_inflates_itself_is_received_streamed_within_the_memory_budget(daemon, bombs):
    """storescu -xd inflates the file on its side and sends 300 MB uncompressed: the node must stream it to disk."""
    proc = subprocess.run(
        storescu_command(LOOPBACK, daemon.port, "DICOMNODE", [bombs["deflated"]], extra_args=["-xd"]),
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and "Store Failed" not in proc.stderr, proc.stderr
    (stored,) = files_under(daemon.var / "store")
    assert stored.stat().st_size > 290 * MIB
    assert_healthy(daemon)


def test_sixty_idle_sockets_held_open_do_not_block_an_echo(daemon):
    idle = [connect(daemon.port) for _ in range(60)]
    try:
        assert_healthy(daemon)
        assert all(still_open(sock) for sock in idle), "the node closed idle sockets before the echo finished"
    finally:
        for sock in idle:
            sock.close()


def test_connections_stalling_after_a_plausible_associate_header_do_not_lock_out_echo(daemon):
    """Slowloris: more stalled half-RQs than max_associations (16). Measured before the fix: echo rejected."""
    stalled = []
    try:
        for _ in range(24):
            sock = connect(daemon.port)
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + bytes(50))
            stalled.append(sock)
        assert_healthy(daemon)
        assert all(still_open(sock) for sock in stalled), "stalled connections were dropped before the echo"
    finally:
        for sock in stalled:
            sock.close()
