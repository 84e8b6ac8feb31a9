"""The node's lifecycle: one owner that starts every component, reloads on SIGHUP and stops them in reverse order."""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from node import adapters
from node import config as config_mod
from node.background import Loop
from node.config import Config, ConfigError
from node.ops.health import Heartbeat, combine_checks
from node.ops.metrics import Metrics
from node.ops.notify import Notifier
from node.ops.observability import NodeGauges, health_checks
from node.process.completion import CapAction, CompletionConfig, CompletionMonitor
from node.process.processor import Processor
from node.pull.inbox import Inbox
from node.pull.scheduler import Scheduler
from node.receive.diskguard import DiskGuard
from node.receive.importer import Importer
from node.receive.pool import ReceiverPool
from node.receive.scp import Receiver, StorageSCP
from node.store.retention import Retention
from node.store.store import Store
from node.web.auth import LoginLimiter, Sessions, Users
from node.web.context import Audit, WebContext
from node.web.server import WebServer
from node.web.service import Actions

log = logging.getLogger(__name__)


class Node:
    """Owns the store, the disk guard and the SCP (and, as they land, the other workers)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        for folder in (config.paths.inbox, config.paths.outbox, config.paths.var):
            folder.mkdir(parents=True, exist_ok=True)
        # Before anything is touched: a second node on the same folders would sweep the running one's temp
        # files and open deliveries. The lock goes with the process, however it ends.
        self._lock: IO[bytes] | None = _lock_var(config.paths.var)
        self.store = Store(config.paths)
        self.store.configure(config.storage.on_conflict, config.retention.quarantine_max_mb)
        s = config.storage
        self.disk_guard = DiskGuard(config.paths.var, s.disk_high_water_pct, s.disk_low_water_pct, s.disk_check_interval_s)
        self.metrics = Metrics()
        self.scp: Receiver = (
            ReceiverPool(config, self.store, self.metrics, config.node.receiver_processes)
            if config.node.receiver_processes > 1 else StorageSCP(config, self.store, self.disk_guard, self.metrics))
        # Requests: the scheduler pulls from peers, the inbox feeds it and writes status files.
        self.scheduler = Scheduler(config, self.store, metrics=self.metrics, space_ok=lambda: not self.disk_guard.tripped())
        self.inbox = Inbox(config, self.store, self.scheduler)
        self.metrics.add_collector(NodeGauges(self.scp, self.disk_guard, self.store, self.scheduler))
        self.heartbeat = Heartbeat("main_loop", max_age_s=30)
        self.web: WebServer | None = None
        self.completion = CompletionMonitor(self.store, completion_config(config))
        self.processor = Processor(config, self.store, self.metrics)
        # Watch-folder import and retention: imports go through the same store path as C-STOREs.
        self.importer = Importer(self.store, config.paths.inbox, config.imports, disk_ok=lambda: not self.disk_guard.tripped())
        self.retention = Retention(self.store, config.paths.outbox, config.retention, config.paths.inbox)
        # Completion decisions every check interval (the processor watches their markers itself).
        self._housekeeping = Loop("housekeeping", self._housekeep, lambda: self.config.completion.check_interval_s, log,
                                  first_wait=True)
        self._started = False

    def start(self) -> tuple[str, int]:
        # Before anything can deliver: leftovers of a crash are never acknowledged data.
        self.store.sweep_temp()
        self.store.reconcile()
        if self.config.web.enabled:
            # Before the SCP: whoever sees the node answer C-ECHO can also reach /healthz and the pages.
            self.web = self._web_server()
            self.web.start()
        address = self.scp.start()
        self.scheduler.start()  # after the SCP: pulled instances arrive through it
        self.inbox.start()
        self._started = True
        self.heartbeat.beat()
        self.processor.start()
        if self.config.imports.enabled:
            self.importer.start()
        self.retention.start()
        self._housekeeping.start()
        self.metrics.set("dicomnode_up", 1.0)
        return address

    def _web_server(self) -> WebServer:
        w = self.config.web
        checks = combine_checks(
            {**health_checks(self.scp, self.disk_guard, self.config.paths.database, self.heartbeat,
                             self.config.paths.database_url),
             **({"receivers": self.scp.health} if isinstance(self.scp, ReceiverPool) else {}),
             **self.loop_checks()}
        )
        ctx = WebContext(
            config=lambda: self.config,
            actions=Actions(self.inbox, self.scheduler, self.store),
            metrics=self.metrics,
            checks=checks,
            users=Users(self.config.users_file),
            sessions=Sessions(w.session_hours * 3600),
            limiter=LoginLimiter(w.login_attempts, w.login_window_s),
            audit=Audit(self.config.paths.var / "web" / "audit.log"),
            disk_ok=lambda: not self.disk_guard.tripped(),
        )
        return WebServer(ctx, w.bind, w.port, allow_remote=w.allow_remote)

    def _housekeep(self) -> None:
        self.completion.tick()

    def loop_checks(self) -> dict[str, Callable[[], tuple[bool, str]]]:
        """Liveness of every background part, for /healthz and the systemd watchdog."""
        stall = self.config.health.stall_after_s
        checks: dict[str, Callable[[], tuple[bool, str]]] = {
            "scheduler": lambda: self.scheduler.health(stall),
            "inbox": lambda: self.inbox.health(stall),
            "completion": lambda: self._housekeeping.health(stall),
            "processing": lambda: self.processor.health(stall),
            "retention": lambda: self.retention.health(stall),
        }
        if self.config.imports.enabled:
            checks["importer"] = lambda: self.importer.health(float("inf"))
        return checks

    def stalled(self) -> list[str]:
        """Background parts that are dead or stuck (the main loop then stops the systemd watchdog pings)."""
        out = []
        for name, check in self.loop_checks().items():
            try:
                ok, detail = check()
            except Exception as exc:  # noqa: BLE001 - a check that cannot run counts as a failed check
                ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
            if not ok:
                out.append(f"{name}: {detail}")
        return out

    def reload(self, new: Config) -> list[str]:
        """Apply a new config without dropping associations; return the keys that need a restart to change."""
        needs_restart = []
        if (new.node.bind, new.node.port, new.node.ae_title) != (self.config.node.bind, self.config.node.port,
                                                                 self.config.node.ae_title):
            needs_restart.append("node.bind/port/ae_title")
        if new.paths != self.config.paths:
            needs_restart.append("paths")
        if new.node.tls != self.config.node.tls:
            needs_restart.append("node.tls")
        if new.node.receiver_processes != self.config.node.receiver_processes:
            needs_restart.append("node.receiver_processes")
        if new.web != self.config.web:
            needs_restart.append("web")
        self.scp.apply_policy(new)
        s = new.storage
        self.store.configure(s.on_conflict, new.retention.quarantine_max_mb)
        self.disk_guard.configure(s.disk_high_water_pct, s.disk_low_water_pct, s.disk_check_interval_s)
        self.completion.config = completion_config(new)
        self.processor.config = new
        self.importer.config = new.imports
        self.retention.config = new.retention
        if new.processing.workers != self.config.processing.workers:
            needs_restart.append("processing.workers")
        self.scheduler.reload(new)
        self.inbox.reload(new)
        self.config = new
        return needs_restart

    def stop(self, drain_timeout: float | None = None) -> None:
        if not self._started:
            if self.web is not None:  # started before a later part failed to start
                self.web.stop()
                self.web = None
            self.store.close()
            self._unlock()
            return
        self.metrics.set("dicomnode_up", 0.0)
        # Requests first: a running move needs the SCP to land its last instances.
        self.inbox.stop()
        self.scheduler.stop()
        self.scp.stop(drain_timeout)
        self.importer.stop()  # between two members; an interrupted item is imported again at the next start
        self.retention.stop()
        self._housekeeping.stop()
        self.processor.stop(self.config.node.drain_timeout_s if drain_timeout is None else drain_timeout)
        if self.web is not None:
            self.web.stop()
            self.web = None
        self.store.close()
        self._started = False
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


def _lock_var(var: Path) -> IO[bytes]:
    """An exclusive lock on var/ (flock on var/node.lock); OSError naming the folder when another node holds it."""
    handle = (var / "node.lock").open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OSError(f"another dicom-node is running on {var} (it holds {var / 'node.lock'})") from None
    return handle


def completion_config(config: Config) -> CompletionConfig:
    c = config.completion
    return CompletionConfig(c.stable_age_s, c.max_wait_s, CapAction(c.on_max_wait), c.check_interval_s)


def run(
    config: Config,
    config_path: Path | None = None,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[Node], None] | None = None,
) -> int:
    """Run the node until SIGTERM/SIGINT (or stop_event); SIGHUP reloads config_path. Returns an exit code."""
    stop = stop_event or threading.Event()
    reload_requested = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        # Signal handlers only set events: pynetdicom's shutdown from a handler would hang.
        stop.set()

    def on_hup(signum: int, _frame: FrameType | None) -> None:
        reload_requested.set()

    previous: dict[signal.Signals, Any] = {}
    if in_main:
        for sig, handler in ((signal.SIGTERM, on_term), (signal.SIGINT, on_term), (signal.SIGHUP, on_hup)):
            previous[sig] = signal.signal(sig, handler)
    notifier = Notifier.from_env()
    adapters.tune_interpreter()
    node = Node(config)
    try:
        host, port = node.start()
        log.info("dicom-node ready: AE %s on %s:%d, store %s", config.node.ae_title, host, port, config.paths.store)
        notifier.ready(f"listening on {host}:{port}")
        if on_ready is not None:
            on_ready(node)
        pinger = WatchdogPinger(notifier, node.stalled)
        while not stop.is_set():
            stop.wait(0.5)
            node.heartbeat.beat()
            pinger.tick()
            if reload_requested.is_set():
                reload_requested.clear()
                notifier.reloading()
                _reload(node, config_path)
                notifier.ready(f"listening on {host}:{port}")
        notifier.stopping()
        log.info("Stopping: draining associations (up to %.0fs)", node.config.node.drain_timeout_s)
        started = time.monotonic()
        node.stop()
        log.info("Stopped in %.1fs", time.monotonic() - started)
        return 0
    finally:
        if node._started:
            node.stop(0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WatchdogPinger:
    """Pings the systemd watchdog at half its interval, for the whole node: while a background part is dead or
    stuck (stalled() lists them) the ping is withheld, so systemd restarts the node; a restart repeats no
    decision and loses nothing."""

    def __init__(self, notifier: Notifier, stalled: Callable[[], list[str]]) -> None:
        self.notifier = notifier
        self.stalled = stalled
        interval = notifier.watchdog_interval()
        self.every = interval / 2 if interval else None
        self._last = time.monotonic()
        self.withheld = False

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.every is None or now - self._last < self.every:
            return
        self._last = now
        stalled = self.stalled()
        if stalled:
            if not self.withheld:
                log.error("Withholding the systemd watchdog ping (systemd will restart the node): %s", "; ".join(stalled))
            self.withheld = True
            return
        if self.withheld:
            log.info("Every background part is alive again: systemd watchdog pings resume")
        self.withheld = False
        self.notifier.watchdog()


def _reload(node: Node, config_path: Path | None) -> None:
    if config_path is None:
        log.warning("SIGHUP ignored: no config file to reload")
        return
    try:
        new = config_mod.load(config_path)
    except ConfigError as exc:
        node.metrics.inc("dicomnode_config_reloads_total", result="refused")
        log.error("Reload refused, keeping the running config:\n%s", exc)
        return
    needs_restart = node.reload(new)
    node.metrics.inc("dicomnode_config_reloads_total", result="applied")
    log.info("Configuration reloaded from %s", config_path)
    if needs_restart:
        log.warning("Changed settings that only take effect after a restart: %s", ", ".join(needs_restart))
