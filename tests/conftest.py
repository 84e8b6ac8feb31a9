"""Shared fixtures: an in-process node and a daemon subprocess, both on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.app import Node
from toolkit.nodeproc import NodeProcess, make_config


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory: start an in-process Node with config sections overridden; stopped at teardown."""
    nodes: list[Node] = []

    def factory(**sections: Any) -> Node:
        node = Node(make_config(tmp_path / f"node{len(nodes)}", **sections))
        node.start()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop(drain_timeout=5)


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: run `daemon.py` as a subprocess; killed at teardown if still running."""
    procs: list[NodeProcess] = []

    def factory(**sections: Any) -> NodeProcess:
        proc = NodeProcess(tmp_path / f"proc{len(procs)}", **sections)
        procs.append(proc)
        return proc.start()

    yield factory
    for proc in procs:
        proc.kill()
