"""Storage + Verification SCP: hardened sockets, association policy, and C-STORE handlers that only store and answer.

Longer than our ~450-line norm on purpose: the socket guard, the association policy and the C-STORE
handler share one lifecycle (start, drain, stop) and one set of counters; split, each part would reach into
the others' state.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import socket
import socketserver
import ssl
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node import adapters
from node.config import Config
from node.ops.metrics import Metrics
from node.receive import fastpath
from node.receive.diskguard import DiskGuard
from node.receive.pduguard import MAX_ASSOCIATE_RQ, GuardedSSLSocket, PduTooLarge, guard, install_tls
from node.store.store import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, Origin, Store, StoreError

log = logging.getLogger(__name__)


# Uncompressed and the common compressed syntaxes. Deflated Explicit VR LE is deliberately absent:
# it can inflate without bound (a "deflate bomb") and no modality needs it.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

# The first PDU must be an A-ASSOCIATE-RQ; real ones are a few kB (128 contexts are < 20 kB, < 40 kB even
# with ten transfer syntaxes each). The screen waits for the whole RQ in the kernel's receive queue (MSG_PEEK),
# so the bound (MAX_ASSOCIATE_RQ, in pduguard) also caps the buffer each pending connection may make us allocate.
# Default TCP receive buffers reliably queue this much unread data; a larger RQ gets a larger buffer.
_PEEKABLE_BY_DEFAULT = 32 * 1024
_ARTIM_S = 5.0  # after an A-ASSOCIATE-RJ, how long we wait for the requestor to close the connection
_PDU_HEADER = struct.Struct(">BBL")


def _peek_exactly(sock: socket.socket, n: int, wait: float | None) -> bytes:
    """Peek n bytes, waiting up to `wait` seconds; fewer only if the peer closed or the wait expired.

    MSG_WAITALL is ignored on a non-blocking descriptor, and Python implements socket timeouts with one, so a
    header arriving in two segments would be seen short. Wait in the kernel instead: blocking mode + SO_RCVTIMEO.
    """
    timeout = sock.gettimeout()
    seconds = 0.0 if wait is None else max(wait, 0.001)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))
    try:
        return sock.recv(n, socket.MSG_PEEK | socket.MSG_WAITALL)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
        sock.settimeout(timeout)


class Refusal(str):
    """Why a connection was refused: readable text for the log, plus a fixed code for metrics labels."""

    code: str

    def __new__(cls, code: str, text: str) -> Refusal:
        refusal = super().__new__(cls, text)
        refusal.code = code
        return refusal


def _reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


class Receiver(Protocol):
    """What the node needs of its listener: one StorageSCP, or the processes of node/receive/pool.py."""

    @property
    def address(self) -> tuple[str, int] | None: ...

    def start(self) -> tuple[str, int]: ...

    def active_associations(self) -> int: ...

    def apply_policy(self, config: Config) -> None: ...

    def stop(self, drain_timeout: float | None = None) -> None: ...


class Slots(Protocol):
    """Association slots shared by several receiver processes (node/receive/pool.py): node.max_associations holds
    for all of them together, and the least busy one accepts the next connection."""

    def claim(self, limit: int) -> bool: ...

    def release(self) -> None: ...

    def my_turn(self) -> bool: ...

    def opened(self) -> None: ...

    def closed(self) -> None: ...


class StorageSCP:
    """The node's listener: owns the pynetdicom AE, its server thread and the C-STORE handler.

    One per node, or one per receiver process (node.receiver_processes > 1): then it serves a listening socket
    made by the parent (`start(listen_socket)`), counts associations in shared `slots`, and names them with
    `assoc_prefix` so the parent can end the deliveries of a receiver that died."""

    def __init__(self, config: Config, store: Store, disk_guard: DiskGuard, metrics: Metrics | None = None,
                 slots: Slots | None = None, assoc_prefix: str = ""):
        self.config = config
        self.store = store
        self.disk_guard = disk_guard
        self.metrics = metrics if metrics is not None else Metrics()
        self.slots = slots
        self.assoc_prefix = assoc_prefix
        self._pending = threading.BoundedSemaphore(config.node.max_pending_connections)
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._accepting = threading.Event()
        self.ae = self._make_ae()

    # ------------------------------------------------------------ set-up

    def _make_ae(self) -> AE:
        n = self.config.node
        ae = AE(ae_title=n.ae_title)
        ae.maximum_associations = n.max_associations
        ae.maximum_pdu_size = n.max_pdu
        ae.acse_timeout = n.acse_timeout_s
        ae.dimse_timeout = n.dimse_timeout_s
        ae.network_timeout = n.network_timeout_s
        ae.require_called_aet = self.config.security.check_called_ae
        if self.config.security.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.security.allowed_calling_aes)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        from pynetdicom import AllStoragePresentationContexts

        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

    def apply_policy(self, config: Config) -> None:
        """Apply reloadable policy (allow-lists, limits, timeouts) to new associations; running ones continue."""
        self.config = config
        n = config.node
        self.ae.maximum_associations = n.max_associations
        self.ae.acse_timeout = n.acse_timeout_s
        self.ae.dimse_timeout = n.dimse_timeout_s
        self.ae.network_timeout = n.network_timeout_s
        self.ae.require_called_aet = config.security.check_called_ae
        self.ae.require_calling_aet = list(config.security.allowed_calling_aes)
        self._set_stream_limits()

    def _set_stream_limits(self) -> None:
        mb = self.config.node.max_instance_mb
        adapters.set_stream_limits(None if mb is None else int(mb * (1 << 20)),
                                   lambda: not self.disk_guard.tripped(fresh=True))

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.node.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        assert tls.certificate is not None and tls.private_key is not None
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_file:
            ctx.load_verify_locations(str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        if not tls.ca_file:
            ctx.verify_mode = ssl.CERT_NONE
        install_tls(ctx)  # accepted TLS sockets bound what a peer can make us buffer, as plain ones do
        return ctx

    def start(self, listen_socket: socket.socket | None = None) -> tuple[str, int]:
        """Bind (or serve the given listening socket) and start serving in a background thread; returns the bound
        (host, port)."""
        adapters.prepare_pynetdicom(self.config.paths.tmp)
        self._set_stream_limits()
        scp = self

        class Handler(NodeRequestHandler):
            owner = scp

        class Server(NodeServer):
            inherited = listen_socket
            slots = scp.slots

        handlers: list[Any] = [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        n = self.config.node
        try:
            server = self.ae.make_server(
                (n.bind, n.port),
                ssl_context=self._ssl_context(),
                evt_handlers=handlers,
                server_class=Server,
                request_handler=Handler,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {n.bind}:{n.port} (node.bind/node.port): {exc.strerror or exc}") from None
        server.daemon_threads = True
        adapters.register_server(self.ae, server)
        self._server = server
        self._accepting.set()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="scp-accept")
        self._thread.daemon = True
        self._thread.start()
        host, port = server.server_address[:2]
        log.info("Storage SCP %s listening on %s:%d", n.ae_title, host, port)
        return str(host), int(port)

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def active_associations(self) -> int:
        return len([a for a in self.ae.active_associations if a.is_acceptor])

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let running associations finish up to drain_timeout, then abort the rest."""
        if self._server is None:
            return
        timeout = self.config.node.drain_timeout_s if drain_timeout is None else drain_timeout
        self._accepting.clear()
        server = self._server
        # BaseServer.shutdown stops the accept loop without aborting associations (pynetdicom's would).
        socketserver.BaseServer.shutdown(server)
        server.server_close()
        deadline = time.monotonic() + timeout
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = [a for a in self.ae.active_associations if a.is_acceptor]
        for assoc in remaining:
            log.warning("Aborting association from %s still running after %.0fs drain", assoc.requestor.ae_title, timeout)
            assoc.abort()
        adapters.unregister_server(self.ae, server)
        self._server = None
        log.info("Storage SCP stopped (%d association(s) aborted after drain)", len(remaining))

    # ------------------------------------------------------------ events

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        assoc_id = self.assoc_prefix + uuid.uuid4().hex[: 12 - len(self.assoc_prefix)]
        assoc._node_assoc_id = assoc_id  # type: ignore[attr-defined]
        self.metrics.inc("dicomnode_associations_total", result="accepted")
        log.info(
            "Association %s accepted from %s (%s:%s) to %s",
            assoc_id,
            assoc.requestor.ae_title,
            assoc.requestor.address,
            assoc.requestor.port,
            assoc.acceptor.ae_title,
        )

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        self.metrics.inc("dicomnode_associations_total", result="rejected")
        self.metrics.inc("dicomnode_rejects_total", reason="association")
        log.warning(
            "Association rejected from %s (%s) calling %s",
            assoc.requestor.ae_title,
            assoc.requestor.address,
            assoc.requestor.primitive.called_ae_title if assoc.requestor.primitive else "?",
        )

    def _on_closed(self, event: Event) -> None:
        _discard_partial_message(event.assoc)
        assoc_id = getattr(event.assoc, "_node_assoc_id", None)
        if assoc_id:
            try:
                self.store.end_delivery(assoc_id)
            except Exception:
                log.exception("Could not close delivery bookkeeping for association %s", assoc_id)
            log.info("Association %s closed", assoc_id)

    def _handle_store(self, event: Event) -> int:
        """Store durably, then answer; never success for anything not on disk and indexed."""
        path = Path(event.dataset_path)
        request: Any = event.request
        assoc = event.assoc
        origin = Origin(
            calling_ae=str(assoc.requestor.ae_title),
            peer_ip=str(assoc.requestor.address),
            assoc_id=getattr(assoc, "_node_assoc_id", ""),
        )
        write_error = adapters.chunk_write_error(path)
        if write_error is not None:
            log.error("C-STORE from %s refused with 0xA700: the dataset could not be written (%s)",
                      origin.calling_ae, write_error)
            path.unlink(missing_ok=True)
            self._fail(STATUS_OUT_OF_RESOURCES)
            return STATUS_OUT_OF_RESOURCES
        try:
            if self.disk_guard.tripped():
                path.unlink(missing_ok=True)
                self._fail(STATUS_OUT_OF_RESOURCES)
                return STATUS_OUT_OF_RESOURCES
            if path.parent != self.config.paths.tmp:
                path = self._copy_into_tmp(path)
            size = path.stat().st_size
            self.store.ingest(
                path,
                origin,
                expected_sop_uid=str(request.AffectedSOPInstanceUID),
                expected_sop_class=str(request.AffectedSOPClassUID),
                transfer_syntax=str(event.context.transfer_syntax),
            )
        except StoreError as exc:
            log.warning("C-STORE from %s refused with 0x%04X: %s", origin.calling_ae, exc.status, exc.reason)
            self._fail(exc.status)
            return exc.status
        except OSError as exc:
            # No space, I/O error, too many files: out of resources, and the temp file must not stay.
            log.error("C-STORE from %s refused with 0xA700: %s", origin.calling_ae, exc)
            Path(event.dataset_path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            self._fail(STATUS_OUT_OF_RESOURCES)
            return STATUS_OUT_OF_RESOURCES
        except Exception:
            log.exception("Unexpected error storing an instance from %s", origin.calling_ae)
            Path(event.dataset_path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            self._fail(0xC211)
            return 0xC211
        self.metrics.inc("dicomnode_instances_received_total", calling_ae=origin.calling_ae)
        self.metrics.inc("dicomnode_bytes_received_total", size)
        return STATUS_SUCCESS

    def _copy_into_tmp(self, path: Path) -> Path:
        target = self.store.new_temp_path()
        shutil.copyfile(path, target)
        return target

    def _fail(self, status: int) -> None:
        self.metrics.inc("dicomnode_store_failures_total", status=f"0x{status:04X}")


def _discard_partial_message(assoc: Any) -> None:
    """An association that ended mid-C-STORE leaves pynetdicom's chunk file behind: remove it (never acknowledged)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    chunk = getattr(message, "_data_set_file", None)
    if chunk is None:
        return
    with contextlib.suppress(OSError):
        chunk.close()
        Path(chunk.name).unlink(missing_ok=True)
        log.info("Discarded a partially received dataset from association %s", getattr(assoc, "_node_assoc_id", "?"))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read n bytes (the socket's timeout applies to each read); fewer only when the peer closed."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _recv_until(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    """Read n bytes before the deadline (a trickling peer cannot stretch it); fewer only when the peer closed."""
    data = b""
    while len(data) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _reject(sock: socket.socket, rq_bytes: int, deadline: float | None, pdu: bytes | None = None) -> None:
    """Answer a complete A-ASSOCIATE-RQ with A-ASSOCIATE-RJ and let the requestor close (PS3.8 9.2, ARTIM).

    Rejected-permanent, service-user, no reason given: polite but final. The RQ is read first and our side is
    half-closed before we wait for the peer's close: closing a socket with unread data would send a TCP reset,
    which can reach the requestor before the RJ and turn a clean rejection into an abort.
    """
    with contextlib.suppress(OSError):
        if rq_bytes and len(_recv_exactly(sock, rq_bytes)) < rq_bytes:
            return
        sock.sendall(pdu or _reject_pdu(0x01, 0x01, 0x01))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.1, min(_ARTIM_S, (deadline - time.monotonic()) if deadline else _ARTIM_S)))
        while sock.recv(4096):
            pass


def _handle_echo(event: Event) -> int:
    return STATUS_SUCCESS


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a listen backlog sized for bursts (socketserver's default is 5).

    With 5, a burst of connections (a reconnecting modality fleet, or a flood) overflows the accept queue and
    the kernel drops SYNs: each dropped client, however legitimate, waits >= 1 s for the retransmission.
    """

    request_queue_size = 128
    inherited: socket.socket | None = None  # a listening socket made by the parent (several receiver processes)
    slots: Slots | None = None
    _declined_since: float | None = None
    _DECLINE_FOR_S = 0.02  # then accept anyway: the least busy receiver may be dead or stuck

    def server_bind(self) -> None:
        if self.inherited is None:
            super().server_bind()
            return
        # Several processes wait on this one socket; whoever accepts first takes the connection and the others'
        # accept() finds nothing: non-blocking, so that is an OSError socketserver ignores, not a hang.
        assert self.socket is not None
        self.socket.close()
        self.socket = self.inherited
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.inherited is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without doing the TLS handshake here: one silent TLS client must not stall every accept.

        pynetdicom wraps with the default do_handshake_on_connect=True in the accept thread; we defer the
        handshake to the connection's own thread, under the ACSE timeout (NodeRequestHandler.handle).
        """
        assert self.socket is not None
        if self.slots is not None and not self.slots.my_turn():
            now = time.monotonic()
            if self._declined_since is None:
                self._declined_since = now
            if now - self._declined_since < self._DECLINE_FOR_S:
                time.sleep(0.001)  # still readable: without a pause, serve_forever would spin on it
                raise OSError("a less busy receiver process takes this connection")
        self._declined_since = None
        client, address = self.socket.accept()
        if self.slots is not None:
            self.slots.opened()
        if self.inherited is not None:
            client.setblocking(True)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class NodeRequestHandler(RequestHandler):
    """Screens a connection before pynetdicom sees it: IP allow-list, first-PDU sanity, pending-connection cap."""

    owner: StorageSCP
    _rq_unread = 0  # bytes of the A-ASSOCIATE-RQ still in the socket after the screen (peeked, not read)
    _assoc: Any = None

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        fastpath.accelerate(assoc)
        self._assoc = assoc
        return assoc

    def handle(self) -> None:
        try:
            self._handle()
        finally:
            if self.owner.slots is not None:
                self.owner.slots.closed()

    def _handle(self) -> None:
        scp = self.owner
        peer_ip = str(self.client_address[0]) if isinstance(self.client_address, tuple) else ""
        if not scp._accepting.is_set():
            self._drop("stopping")
            return
        if not scp._pending.acquire(blocking=False):
            self._drop("too many pending connections")
            scp.metrics.inc("dicomnode_rejects_total", reason="pending_limit")
            return
        try:
            n = scp.config.node
            sock = self.request
            assert isinstance(sock, socket.socket)
            self.request = guard(sock, n.max_pdu, n.acse_timeout_s)
            verdict = self._handshake() or self._screen(peer_ip)
        finally:
            scp._pending.release()
        if verdict is not None:
            scp.metrics.inc("dicomnode_rejects_total", reason=verdict.code)
            # A connect-and-close is what port probes and load balancers do: not worth a warning.
            level = logging.INFO if verdict.code == "closed_early" else logging.WARNING
            log.log(level, "Connection from %s refused: %s", peer_ip, verdict)
            with contextlib.suppress(OSError):
                self.request.close()
            return
        assert isinstance(self.request, socket.socket)
        if scp.slots is not None and not scp.slots.claim(scp.config.node.max_associations):
            # The receivers' shared limit (node.max_associations across processes): transient, as pynetdicom's
            # own "local limit exceeded" (result 2, source 3, reason 2); the sender retries later.
            scp.metrics.inc("dicomnode_associations_total", result="rejected")
            scp.metrics.inc("dicomnode_rejects_total", reason="association_limit")
            log.warning("Association from %s refused: node.max_associations (%d) reached", peer_ip,
                        scp.config.node.max_associations)
            _reject(self.request, self._rq_unread, None, _reject_pdu(0x02, 0x03, 0x02))
            with contextlib.suppress(OSError):
                self.request.close()
            return
        try:
            self.request.settimeout(scp.config.node.network_timeout_s)
            super().handle()
            if scp.slots is not None and self._assoc is not None:
                # pynetdicom's handle() only starts the association's thread: the slot (and this connection's
                # place in the receivers' balance) is held until that thread ends.
                self._assoc.join()
        finally:
            if scp.slots is not None:
                scp.slots.release()

    def _handshake(self) -> Refusal | None:
        """Finish a deferred TLS handshake within the ACSE timeout; a refusal reason or None."""
        sock = self.request
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            sock.do_handshake()
        except (ssl.SSLError, TimeoutError, OSError) as exc:
            return Refusal("tls_handshake", f"TLS handshake failed: {exc}")
        return None

    def _screen(self, peer_ip: str) -> Refusal | None:
        """Peek at the first PDU without consuming it; return a refusal reason or None to proceed."""
        sock = self.request
        assert isinstance(sock, socket.socket)
        if isinstance(sock, ssl.SSLSocket):
            return self._screen_tls(sock, peer_ip)
        wait = sock.gettimeout()
        deadline = None if wait is None else time.monotonic() + wait
        try:
            head = _peek_exactly(sock, 6, wait)
        except (TimeoutError, OSError):
            return Refusal("timeout", "no A-ASSOCIATE-RQ within the ACSE timeout")
        if len(head) < 6:
            return Refusal("closed_early", "connection closed before a PDU header")
        pdu_type, _, length = _PDU_HEADER.unpack(head)
        if pdu_type != 0x01:
            return Refusal("not_associate_rq", f"first PDU is type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
        if length > MAX_ASSOCIATE_RQ or length < 68:
            return Refusal("bad_length", f"A-ASSOCIATE-RQ declares an implausible length {length}")
        # Hand over only a complete RQ: pynetdicom counts a connection against max_associations from its first
        # byte, so peers that send a plausible header and stall would otherwise lock everyone out.
        total = 6 + length
        if total > _PEEKABLE_BY_DEFAULT:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * total + 65536)
        try:
            whole = _peek_exactly(sock, total, None if deadline is None else deadline - time.monotonic())
        except (TimeoutError, OSError):
            whole = b""
        if len(whole) < total:
            return Refusal("timeout", f"A-ASSOCIATE-RQ of {length} bytes not complete within the ACSE timeout")
        if not self._ip_allowed(peer_ip):
            _reject(sock, total, deadline)
            return Refusal("host_not_allowed", f"peer address {peer_ip} not in security.allowed_hosts")
        self._rq_unread = total
        return None

    def _screen_tls(self, sock: ssl.SSLSocket, peer_ip: str) -> Refusal | None:
        """SSLSocket.recv refuses MSG_PEEK: read the whole A-ASSOCIATE-RQ within the ACSE timeout, check it as
        the plain screen does, and hand it to pynetdicom through the socket's read-ahead buffer."""
        wait = sock.gettimeout()
        deadline = None if wait is None else time.monotonic() + wait
        try:
            head = _recv_until(sock, 6, deadline)
        except PduTooLarge as exc:
            return Refusal("not_associate_rq", str(exc))
        except (TimeoutError, OSError):
            return Refusal("timeout", "no A-ASSOCIATE-RQ within the ACSE timeout")
        if len(head) < 6:
            return Refusal("closed_early", "connection closed before a PDU header")
        _, _, length = _PDU_HEADER.unpack(head)
        if length < 68:
            return Refusal("bad_length", f"A-ASSOCIATE-RQ declares an implausible length {length}")
        try:
            body = _recv_until(sock, length, deadline)
        except (TimeoutError, OSError):
            body = b""
        if len(body) < length:
            return Refusal("timeout", f"A-ASSOCIATE-RQ of {length} bytes not complete within the ACSE timeout")
        sock.settimeout(wait)
        if not self._ip_allowed(peer_ip):
            _reject(sock, 0, deadline)  # the RQ is read already
            return Refusal("host_not_allowed", f"peer address {peer_ip} not in security.allowed_hosts")
        if isinstance(sock, GuardedSSLSocket):
            sock.prebuffer = head + body
        return None

    def _ip_allowed(self, peer_ip: str) -> bool:
        networks = self.owner.config.security.allowed_networks
        if not networks:
            return True
        try:
            addr = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        return any(addr in net for net in networks)

    def _drop(self, why: str) -> None:
        log.debug("Dropping connection from %s: %s", self.client_address, why)
        with contextlib.suppress(OSError):
            sock: Any = self.request
            sock.close()
