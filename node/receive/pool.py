"""Several receiver processes on one listening socket (node.receiver_processes > 1).

One Python process receives at most one core's worth of C-STOREs: pynetdicom's PDU handling, the dataset walk
and the response all hold the GIL, so four associations into one process go no faster than one. With several
senders at once (a PACS auto-routing over several associations) the node runs N receiver processes: the parent
binds the port once and hands the listening socket to each; the kernel gives each connection to whichever
process accepts it first. Each receiver is a whole StorageSCP with its own store connection (SQLite in WAL mode
takes writers from several processes; PostgreSQL as ever) and its own disk guard: the durability rule is the
StorageSCP's, unchanged (no success before the file and its index row are on disk).

Held across the processes:

- node.max_associations: shared slots, one counter per receiver in shared memory, summed under one lock;
- metrics: receivers send their counter increments to the parent, which owns the registry behind /metrics;
- logging: receivers send their records to the parent, where daemon.py configured logging once;
- drain: stop() asks every receiver to stop accepting and drain (node.drain_timeout_s), then waits for it;
- a receiver that dies (SIGKILL, OOM) is replaced: its partial temp files go (never acknowledged), its slots
  are freed and its associations' deliveries ended. Receivers die with the parent (PR_SET_PDEATHSIG), so a
  killed node never leaves a process holding its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from typing import Any

from node import adapters
from node.config import Config
from node.ops.metrics import Metrics
from node.receive.diskguard import DiskGuard
from node.receive.scp import StorageSCP
from node.store.store import Store

log = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("spawn")  # never fork a process that runs threads
_READY_TIMEOUT_S = 60.0
_STABLE_S = 10.0  # a receiver that lived this long before dying is replaced at once
_PR_SET_PDEATHSIG = 1


class SharedSlots:
    """node.max_associations across receiver processes: one count per receiver (a dead one's are zeroed).

    Also who accepts the next connection: the receiver holding the fewest connections (`my_turn`). Whichever
    process wakes first would otherwise take it, and two busy senders on one receiver while another idles
    halve what two cores can do."""

    def __init__(self, counts: Any, connections: Any, index: int) -> None:
        self.counts = counts  # multiprocessing Array('i', n), with its lock: associations
        self.connections = connections  # Array('i', n): accepted connections not yet finished
        self.index = index

    def my_turn(self) -> bool:
        held = list(self.connections)  # a racy read is fine: a wrong guess costs one connection's balance
        return held[self.index] <= min(held)

    def opened(self) -> None:
        with self.connections.get_lock():
            self.connections[self.index] += 1

    def closed(self) -> None:
        with self.connections.get_lock():
            self.connections[self.index] = max(0, self.connections[self.index] - 1)

    def claim(self, limit: int) -> bool:
        with self.counts.get_lock():
            if sum(self.counts) >= limit:
                return False
            self.counts[self.index] += 1
            return True

    def release(self) -> None:
        with self.counts.get_lock():
            self.counts[self.index] = max(0, self.counts[self.index] - 1)


class _ForwardedMetrics(Metrics):
    """A receiver's metrics: checked against the declared table here, counted in the parent's registry.

    Increments are summed here and sent every FLUSH_S (and at stop): one message a quarter second instead of two
    per instance, each a pickle, a pipe write and a thread wake-up on both sides."""

    FLUSH_S = 0.25

    def __init__(self, events: Any) -> None:
        super().__init__()
        self._events = events
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._run, name="metrics-forwarder", daemon=True)
        self._flusher.start()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        super().inc(name, value, **labels)  # the same ValueError for an undeclared name or wrong labels
        key = (name, tuple(sorted(labels.items())))
        with self._pending_lock:
            self._pending[key] = self._pending.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        raise ValueError(f"{name}: a receiver process forwards counters only; gauges are set in the node's process")

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        raise ValueError(f"{name}: a receiver process forwards counters only; summaries are kept in the node's process")

    def flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, {}
        for (name, labels), value in batch.items():
            self._events.put(("inc", name, value, dict(labels)))

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_S):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(5.0)
        self.flush()


@dataclasses.dataclass
class _Receiver:
    index: int
    prefix: str
    process: Any  # multiprocessing.process.BaseProcess
    commands: multiprocessing.connection.Connection
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    failure: str | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    quick_deaths: int = 0  # deaths in a row within _STABLE_S of a start: the replacement waits longer each time


class ReceiverPool:
    """The StorageSCP interface the node uses (start, address, active_associations, apply_policy, stop), served
    by `processes` receiver processes."""

    def __init__(self, config: Config, store: Store, metrics: Metrics, processes: int) -> None:
        if processes < 2:
            raise ValueError("a receiver pool needs at least two processes (one runs in the node itself)")
        self.config = config
        self.store = store
        self.metrics = metrics
        self.processes = processes
        self._socket: socket.socket | None = None
        self._counts: Any = _CTX.Array("i", processes)
        self._connections: Any = _CTX.Array("i", processes)
        self._events: Any = _CTX.Queue()
        self._receivers: list[_Receiver] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    # ------------------------------------------------------------ life cycle

    def start(self) -> tuple[str, int]:
        n = self.config.node
        sock = socket.socket(socket.AF_INET6 if ":" in n.bind else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((n.bind, n.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {n.bind}:{n.port} (node.bind/node.port): {exc.strerror or exc}") from None
        self._socket = sock
        self._threads = [threading.Thread(target=self._relay, name="receivers-events", daemon=True)]
        self._threads[0].start()
        try:
            with self._lock:
                self._receivers = [self._spawn(k) for k in range(self.processes)]
            for receiver in list(self._receivers):
                if not receiver.ready.wait(_READY_TIMEOUT_S) or receiver.failure:
                    raise RuntimeError(f"receiver process {receiver.index} did not start: "
                                       f"{receiver.failure or 'no answer within 60 s'}")
        except BaseException:
            self.stop(0.0)
            raise
        supervisor = threading.Thread(target=self._supervise, name="receivers-supervisor", daemon=True)
        supervisor.start()
        self._threads.append(supervisor)
        host, port = sock.getsockname()[:2]
        log.info("Storage SCP %s listening on %s:%d in %d receiver processes", n.ae_title, host, port, self.processes)
        return str(host), int(port)

    def _spawn(self, index: int) -> _Receiver:
        assert self._socket is not None
        for shared in (self._counts, self._connections):
            with shared.get_lock():
                shared[index] = 0
        prefix = f"r{index:x}{secrets.token_hex(2)}"
        parent_end, child_end = _CTX.Pipe()
        root = logging.getLogger()
        process = _CTX.Process(
            target=_receiver_main, name=f"dicom-node receiver {index}", daemon=False,
            args=(index, prefix, self.config, self._socket, child_end, self._events, self._counts, self._connections,
                  root.getEffectiveLevel(), logging.getLogger("pynetdicom").getEffectiveLevel()),
        )
        process.start()
        child_end.close()
        return _Receiver(index, prefix, process, parent_end)

    @property
    def address(self) -> tuple[str, int] | None:
        if self._socket is None:
            return None
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def health(self) -> tuple[bool, str]:
        """/healthz: every receiver process up and serving (one being replaced fails the check meanwhile)."""
        with self._lock:
            receivers = list(self._receivers)
        up = [r for r in receivers if r.ready.is_set() and not r.failure and r.process.exitcode is None]
        if len(up) == self.processes:
            return True, f"{len(up)} receiver processes serving"
        down = sorted({r.index for r in receivers} - {r.index for r in up})
        return False, f"{len(up)} of {self.processes} receiver processes serving (not: {', '.join(map(str, down))})"

    def active_associations(self) -> int:
        with self._counts.get_lock():
            return int(sum(self._counts))

    def apply_policy(self, config: Config) -> None:
        """New allow-lists, limits and timeouts for new associations, in every receiver."""
        self.config = config
        with self._lock:
            for receiver in self._receivers:
                with contextlib.suppress(OSError, ValueError):
                    receiver.commands.send(("policy", config))

    def stop(self, drain_timeout: float | None = None) -> None:
        """Every receiver stops accepting, drains up to drain_timeout, and exits; stragglers are killed."""
        if self._socket is None:
            return
        timeout = self.config.node.drain_timeout_s if drain_timeout is None else drain_timeout
        self._stopping.set()
        with self._lock:
            receivers = list(self._receivers)
        for receiver in receivers:
            with contextlib.suppress(OSError, ValueError):
                receiver.commands.send(("stop", timeout))
        deadline = time.monotonic() + timeout + 15.0
        for receiver in receivers:
            receiver.process.join(max(0.0, deadline - time.monotonic()))
            if receiver.process.is_alive():
                log.warning("Receiver process %d did not stop after its drain; killing it", receiver.index)
                receiver.process.kill()
                receiver.process.join(5.0)
            receiver.commands.close()
        self._socket.close()
        self._socket = None
        self._events.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        self._events.close()
        log.info("Storage SCP stopped (%d receiver processes)", len(receivers))

    # ------------------------------------------------------------ parent threads

    def _relay(self) -> None:
        """Receivers' log records and metric increments, applied in the parent."""
        while True:
            try:
                item = self._events.get()
            except (EOFError, OSError):
                return
            if item is None:
                return
            try:
                if isinstance(item, logging.LogRecord):
                    logging.getLogger(item.name).handle(item)
                elif item[0] == "inc":
                    _, name, value, labels = item
                    self.metrics.inc(name, value, **labels)
                elif item[0] in ("ready", "failed"):
                    self._mark(item[1], item[2] if item[0] == "failed" else None)
            except Exception:  # a bad event must not end the relay
                log.exception("Could not apply an event from a receiver process: %r", item)

    def _mark(self, index: int, failure: str | None) -> None:
        with self._lock:
            for receiver in self._receivers:
                if receiver.index == index:
                    receiver.failure = failure
                    receiver.ready.set()

    def _supervise(self) -> None:
        """Replace a receiver that died while the node runs. This thread spawns the replacements, and the kernel
        kills a process when the thread that started it ends (PR_SET_PDEATHSIG), so it lives until every
        receiver has exited, drain included."""
        while True:
            with self._lock:
                sentinels = {r.process.sentinel: r for r in self._receivers if r.process.exitcode is None}
            if self._stopping.is_set() and not sentinels:
                return
            done = multiprocessing.connection.wait(list(sentinels), timeout=0.5) if sentinels else []
            if self._stopping.is_set():
                continue
            for sentinel in done:
                self._replace(sentinels[sentinel])

    def _replace(self, dead: _Receiver) -> None:
        code = dead.process.exitcode
        quick = dead.quick_deaths + 1 if time.monotonic() - dead.started < _STABLE_S else 0
        delay = min(30.0, 0.5 * 2 ** (quick - 1)) if quick else 0.0
        log.error("Receiver process %d died (exit code %s); its unacknowledged transfers are dropped and it is "
                  "restarted%s", dead.index, code, f" in {delay:g} s" if delay else "")
        for shared in (self._counts, self._connections):
            with shared.get_lock():
                shared[dead.index] = 0
        with contextlib.suppress(OSError):
            dead.commands.close()
        shutil.rmtree(self.config.paths.tmp / f"receiver-{dead.index}", ignore_errors=True)
        try:
            ended = self.store.end_deliveries_of(dead.prefix)
            if ended:
                log.info("Ended %d delivery record(s) of the dead receiver's associations", ended)
        except Exception:
            log.exception("Could not end the deliveries of receiver process %d", dead.index)
        if delay and self._stopping.wait(delay):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            fresh = self._spawn(dead.index)
            fresh.quick_deaths = quick
            self._receivers = [fresh if r is dead else r for r in self._receivers]
            self.restarts += 1
        if not fresh.ready.wait(_READY_TIMEOUT_S) or fresh.failure:
            log.error("Replacement receiver process %d did not start: %s", dead.index, fresh.failure or "no answer")


# ---------------------------------------------------------------- the receiver process


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the parent dies (a SIGKILLed node must free its port)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the call took effect
        os._exit(1)


def _forward_logging(events: Any, level: int, pynetdicom_level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(events))
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)


def _receiver_main(index: int, prefix: str, config: Config, listen_socket: socket.socket,
                   commands: multiprocessing.connection.Connection, events: Any, counts: Any, connections: Any,
                   level: int, pynetdicom_level: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when receivers stop (drain)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _forward_logging(events, level, pynetdicom_level)
    adapters.tune_interpreter()  # as the node's own process (node/app.py)
    try:
        tmp = config.paths.tmp / f"receiver-{index}"
        shutil.rmtree(tmp, ignore_errors=True)  # a predecessor's partial transfers: never acknowledged
        tmp.mkdir(parents=True)
        config = dataclasses.replace(config, paths=dataclasses.replace(config.paths, tmp_dir=tmp))
        store = Store(config.paths)
        store.configure(config.storage.on_conflict, config.retention.quarantine_max_mb)
        s = config.storage
        guard = DiskGuard(config.paths.var, s.disk_high_water_pct, s.disk_low_water_pct, s.disk_check_interval_s)
        metrics = _ForwardedMetrics(events)
        scp = StorageSCP(config, store, guard, metrics, slots=SharedSlots(counts, connections, index),
                         assoc_prefix=prefix)
        scp.start(listen_socket)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the parent must hear it rather than wait
        events.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    log.info("Receiver process %d ready (pid %d)", index, os.getpid())
    events.put(("ready", index, None))
    while True:
        try:
            command, arg = commands.recv()
        except (EOFError, OSError):
            command, arg = "stop", 0.0  # the parent is gone
        if command == "policy":
            policy: Config = arg
            config = dataclasses.replace(policy, paths=config.paths)
            scp.apply_policy(config)
            store.configure(config.storage.on_conflict, config.retention.quarantine_max_mb)
            s = config.storage
            guard.configure(s.disk_high_water_pct, s.disk_low_water_pct, s.disk_check_interval_s)
            log.info("Receiver process %d applied the reloaded policy", index)
        elif command == "stop":
            scp.stop(float(arg))
            store.close()
            metrics.close()
            events.close()
            events.join_thread()
            return
