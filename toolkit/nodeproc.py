"""Run dicom-node for tests: in-process (Node) or as a daemon subprocess, on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from node import config as config_mod
from node.config import Config
from toolkit.peers import echoscu, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def config_dict(root: Path, port: int | None = None, **sections: Any) -> dict[str, Any]:
    """A node config rooted in a temp folder; keyword sections are merged over the defaults."""
    data: dict[str, Any] = {
        "node": {"ae_title": "DICOMNODE", "bind": LOOPBACK, "port": port or free_port(), "drain_timeout_s": 10},
        "paths": {"inbox": str(root / "inbox"), "outbox": str(root / "outbox"), "var": str(root / "var")},
        "peers": {"pacs": {"ae_title": "PACS", "host": LOOPBACK, "port": free_port()}},
        "logging": {"level": "INFO"},
        "web": {"port": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


def make_config(root: Path, **sections: Any) -> Config:
    data = config_dict(root, **sections)
    return config_mod.parse(yaml.safe_dump(data), source="test", environ={})


class NodeProcess:
    """`python daemon.py --config FILE` as a child process, ready when it answers C-ECHO."""

    def __init__(self, root: Path, **sections: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data = config_dict(root, **sections)
        self.config_path = root / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(self.data), encoding="utf-8")
        self.log_path = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_env: dict[str, str] = {}

    @property
    def port(self) -> int:
        return int(self.data["node"]["port"])

    @property
    def var(self) -> Path:
        return Path(self.data["paths"]["var"])

    def start(self, timeout: float = 30.0) -> NodeProcess:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "daemon.py"), "--config", str(self.config_path)],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        wait_for_port(LOOPBACK, self.port, timeout=timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while not echoscu(LOOPBACK, self.port, "DICOMNODE"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"node did not answer C-ECHO:\n{self.log()}")
        return self

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """The process's resident-set high-water mark (VmHWM, Linux), in bytes."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii")
        (line,) = [x for x in status.splitlines() if x.startswith("VmHWM:")]
        return int(line.split()[1]) * 1024

    def restart(self, timeout: float = 30.0) -> NodeProcess:
        """Start a new daemon on the same root, config, port and var (after kill() or stop())."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("restart() needs the previous daemon stopped or killed first")
        return self.start(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
