"""A processing worker's start: it dies with the node, even when the node died before the worker was ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_init(node_pid: int) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from node.process.processor import _worker_init; "
            f"_worker_init(None, {node_pid}); print('still here'); sys.exit(0)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_worker_whose_node_died_while_it_started_exits_instead_of_lingering() -> None:
    # The worker's parent is this test process; a different node pid stands for a node that died and left the
    # worker to init (its parent is then no longer the node).
    result = run_init(node_pid=os.getpid() + 1_000_000)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "still here" not in result.stdout


def test_a_worker_whose_node_is_alive_starts_normally() -> None:
    result = run_init(node_pid=os.getpid())
    assert result.returncode == 0, result.stderr
    assert "still here" in result.stdout


def test_a_workers_temporary_files_go_under_the_nodes_own_folder(tmp_path: Path) -> None:
    work = tmp_path / "var" / "tmp" / "processing"
    code = ("import tempfile; from node.process.processor import _worker_init; "
            f"_worker_init(None, None, {str(work)!r}); "
            "f = tempfile.NamedTemporaryFile(); print(f.name)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False, env={**os.environ, "TMPDIR": "/tmp"})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == work
