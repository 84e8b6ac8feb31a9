"""Real DICOM peers on loopback (Orthanc, DCMTK storescp/storescu) for integration tests and benches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
DCMTK_DIR = Path("/usr/bin")
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DCM2NIIX_BIN = Path("/usr/bin/dcm2niix")


class PeerToolMissing(RuntimeError):
    """A required external tool is not installed: the test must fail, not skip."""


class PeerStartError(RuntimeError):
    """A peer process did not become ready; carries the tail of its log."""


def _require(path: Path, package: str) -> str:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise PeerToolMissing(f"{path} is not installed: apt-get install {package}")
    return str(path)


def dcmtk(tool: str) -> str:
    """Full path of a DCMTK tool; the venv's pynetdicom shadows the bare names, so never use them."""
    if "/" in tool or not tool:
        raise ValueError(f"DCMTK tool name expected, got {tool!r}")
    return _require(DCMTK_DIR / tool, "dcmtk")


def orthanc_bin() -> str:
    """Full path of the Orthanc server binary."""
    return _require(ORTHANC_BIN, "orthanc")


def dcm2niix_bin() -> str:
    """Full path of dcm2niix."""
    return _require(DCM2NIIX_BIN, "dcm2niix")


def free_port(host: str = LOOPBACK) -> int:
    """An ephemeral TCP port free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll until host:port accepts a connection; fail early if proc (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerStartError(f"process exited with code {proc.returncode} before {host}:{port} opened")
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout} s")


def wait_for_listener(proc: subprocess.Popen[Any], port: int, timeout: float = 20.0) -> None:
    """Poll until proc itself listens on port (a connect test could reach whoever stole the port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerStartError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            conns = []
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return
        time.sleep(0.05)
    raise TimeoutError(f"process {proc.pid} did not listen on port {port} within {timeout} s")


def peer_env(nodelay: bool = True, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a DCMTK/Orthanc process; TCP_NODELAY=1 turns Nagle off in Debian's DCMTK."""
    env = dict(os.environ if base is None else base)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def storescu_command(
    host: str,
    port: int,
    called_ae: str,
    paths: Iterable[str | Path],
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    propose_own_syntax: bool = True,
) -> list[str]:
    """The argv of a DCMTK storescu run (for callers that need Popen, e.g. concurrent senders)."""
    items = [str(p) for p in paths]
    if not items:
        raise ValueError("storescu: no files to send")
    args = [dcmtk("storescu"), "-aet", calling_ae, "-aec", called_ae, "-nh", "-ta", "30", "-ts", "60"]
    if propose_own_syntax:
        # -R proposes only the SOP class / transfer syntax pairs the files use: compressed files go as they are.
        args.append("-R")
    if any(Path(p).is_dir() for p in items):
        args += ["+sd", "+r"]
    return [*args, *extra_args, host, str(port), *items]


def storescu(
    host: str,
    port: int,
    called_ae: str,
    paths: Iterable[str | Path],
    calling_ae: str = "STORESCU",
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    propose_own_syntax: bool = True,
    check: bool = True,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, recursively) with DCMTK storescu.

    env defaults to the caller's environment with TCP_NODELAY=1. With check, a non-zero exit or any
    refused C-STORE raises with storescu's stderr.
    """
    args = storescu_command(host, port, called_ae, paths, calling_ae, extra_args, propose_own_syntax)
    proc = subprocess.run(
        args,
        env=dict(env) if env is not None else peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    failed = proc.returncode != 0 or "Store Failed" in proc.stderr
    if check and failed:
        raise RuntimeError(f"storescu to {called_ae}@{host}:{port} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def echoscu(host: str, port: int, called_ae: str, calling_ae: str = "ECHOSCU", timeout: float = 30.0) -> bool:
    """One C-ECHO with DCMTK echoscu; True on success."""
    proc = subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_ae, "-aec", called_ae, "-to", "5", "-ta", "10", host, str(port)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode == 0


def findscu_study_uids(
    host: str,
    port: int,
    called_ae: str,
    keys: Mapping[str, str],
    calling_ae: str = "FINDSCU",
    workdir: Path | None = None,
) -> list[str]:
    """STUDY-level C-FIND with DCMTK findscu (Study Root); returns the StudyInstanceUIDs found."""
    from pydicom import dcmread

    with tempfile.TemporaryDirectory(dir=workdir) as out:
        args = [dcmtk("findscu"), "-S", "-aet", calling_ae, "-aec", called_ae, "-k", "QueryRetrieveLevel=STUDY"]
        args += ["-k", "StudyInstanceUID"]
        for key, value in keys.items():
            args += ["-k", f"{key}={value}"]
        args += ["-X", "-od", out, host, str(port)]
        proc = subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"findscu failed ({proc.returncode}): {proc.stderr[-2000:]}")
        uids = [str(dcmread(p).StudyInstanceUID) for p in sorted(Path(out).glob("rsp*.dcm"))]
    return uids


class OrthancPeer:
    """A real Orthanc on loopback with its own config, storage and free DICOM/HTTP ports.

    modalities: name -> (AE title, host, port) entries of DicomModalities (the AEs allowed to query it and
    the destinations it can C-MOVE to). allow_unknown: value of every DicomAlwaysAllow* flag, i.e. whether
    AEs missing from modalities may echo/store/find/move/get. config: extra keys overriding the defaults.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        ae_title: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        allow_unknown: bool = True,
        check_called_aet: bool = True,
        nodelay: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="orthanc-")
            workdir = Path(self._own_tmp.name)
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.host = LOOPBACK
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities: dict[str, tuple[str, str, int]] = dict(modalities or {})
        self.allow_unknown = allow_unknown
        self.check_called_aet = check_called_aet
        self.nodelay = nodelay
        self.extra_config = dict(config or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with (Orthanc 1.10 keys)."""
        db = self.workdir / "db"
        cfg: dict[str, Any] = {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 2,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpThreadsCount": 8,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": self.allow_unknown,
            "DicomAlwaysAllowStore": self.allow_unknown,
            "DicomAlwaysAllowFind": self.allow_unknown,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": self.allow_unknown,
            "DicomAlwaysAllowMove": self.allow_unknown,
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 30,
            "DicomThreadsCount": 4,
            "UnknownSopClassAccepted": False,
            "SynchronousCMove": True,
            "SaveJobs": False,
            "StableAge": 2,
            "LogExportedResources": False,
            "StorageCompression": False,
            "DeidentifyLogs": True,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancPeer:
        """Write the config, start Orthanc and wait until its REST API answers /system.

        Before the first successful start, a port taken by someone else between free_port() and Orthanc's
        bind (other test runs share the machine) gets fresh ports and another try: read the ports after start().
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        attempts = 1 if self._started_once else 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                self._wait_ready(timeout)
            except PeerStartError:
                self.stop()
                if attempt == attempts or "already in use" not in self.log_tail(5):
                    raise
                self.dicom_port, self.http_port = free_port(), free_port()
                continue
            except BaseException:
                self.stop()
                raise
            self._started_once = True
            break
        return self

    def _launch(self) -> None:
        binary = orthanc_bin()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--logfile=" + str(self.log_path), str(self.config_path)],
                cwd=self.workdir,
                env=peer_env(self.nodelay),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerStartError(f"Orthanc exited with {self.proc.returncode} during start:\n{_log_tail(self.log_path)}")
            try:
                self.rest("/system", timeout=1.0)
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
                continue
            if port_open(self.host, self.dicom_port):
                return
            time.sleep(0.05)
        raise PeerStartError(f"Orthanc not ready after {timeout} s:\n{_log_tail(self.log_path)}")

    def stop(self) -> None:
        """Terminate Orthanc and wait for it to exit (its database lock goes with it)."""
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None

    def restart(self) -> OrthancPeer:
        """Stop, then start again with the same ports, config and storage."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """End this throwaway peer (the with-block exit) and remove its temporary directory if it made one.

        SIGKILL, then wait for the exit: a graceful stop costs ~3.5 s of Orthanc's HTTP/DICOM server polling,
        and its SQLite index stays consistent after a kill. Use stop() when the shutdown itself matters.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
        """Call Orthanc's REST API on loopback; JSON in, JSON out."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def load(self, paths: Iterable[str | Path], calling_ae: str = "LOADER") -> subprocess.CompletedProcess[str]:
        """Store files into Orthanc with DCMTK storescu (Nagle off as for any test peer)."""
        return storescu(self.host, self.dicom_port, self.ae_title, paths, calling_ae=calling_ae)

    def instance_count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])

    def studies(self) -> list[dict[str, Any]]:
        """Every study with its main DICOM tags (REST /studies?expand)."""
        return list(self.rest("/studies?expand"))

    def study_uids(self) -> list[str]:
        return sorted(s["MainDicomTags"]["StudyInstanceUID"] for s in self.studies())

    def log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_path, lines)


class StorescpPeer:
    """DCMTK storescp on a free loopback port writing into a directory (a baseline receiver for benches)."""

    def __init__(
        self,
        workdir: Path | None = None,
        ae_title: str = "STORESCP",
        nodelay: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="storescp-")
            workdir = Path(self._own_tmp.name)
        self.workdir = Path(workdir)
        self.out_dir = self.workdir / "received"
        self.ae_title = ae_title
        self.host = LOOPBACK
        self.port = free_port()
        self.nodelay = nodelay
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "storescp.log"

    def start(self, timeout: float = 20.0) -> StorescpPeer:
        """Start storescp; if it exits at once (its port was taken meanwhile), retry on fresh ports."""
        binary = dcmtk("storescp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 4):
            # +xa: accept every transfer syntax, so compressed inputs are not refused by the baseline.
            args = [binary, "-aet", self.ae_title, "+xa", "-od", str(self.out_dir), *self.extra_args, str(self.port)]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    args, env=peer_env(self.nodelay), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            try:
                wait_for_listener(self.proc, self.port, timeout)
            except PeerStartError:
                self.stop()
                if attempt == 3:
                    raise PeerStartError(f"storescp did not start:\n{_log_tail(self.log_path)}") from None
                self.port = free_port()
                continue
            except BaseException:
                self.stop()
                raise
            break
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())

    def clear(self) -> None:
        """Empty the output directory between bench rounds."""
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> StorescpPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def postgres_bin_dir() -> Path:
    """Debian's PostgreSQL server binaries (the newest installed major version)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise PeerToolMissing("/usr/lib/postgresql/*/bin/initdb is not installed: apt-get install postgresql")
    return versions[-1].parent


class PostgresPeer:
    """A real PostgreSQL server in a temp folder, on a free loopback port, trust authentication.

    As root (the test command), the cluster is owned and run by the `postgres` user Debian creates, since the
    server refuses to run as root."""

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.port = free_port()
        # Not tempfile's default folder: a node started in this process points that at its own var/tmp, which
        # the postgres user cannot enter.
        self.workdir = Path(tempfile.mkdtemp(prefix="dicomnode-pg-", dir=os.environ.get("TMPDIR", "/tmp")))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PostgresPeer:
        if self._as_root:
            shutil.chown(self.workdir, "postgres", "postgres")
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        if done.returncode != 0:
            raise PeerStartError(f"initdb failed: {done.stdout}{done.stderr}")
        options = f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.workdir} -c fsync=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60",
                         "start")
        if done.returncode != 0:
            raise PeerStartError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{_log_tail(self.log_path)}")
        wait_for_port(LOOPBACK, self.port, timeout=30)
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
