"""One node per data folder: a second one refuses to start before touching anything; bind errors name the port."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from node.app import Node
from toolkit.nodeproc import make_config

pytestmark = pytest.mark.integration


def test_a_second_node_on_the_same_folders_refuses_to_start_and_leaves_the_running_one_alone(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    running = start_node()
    in_flight = running.config.paths.tmp / "rx-in-flight.dcm"
    in_flight.write_bytes(b"a C-STORE being received")
    other = make_config(tmp_path / "other", paths={"inbox": str(running.config.paths.inbox),
                                                   "outbox": str(running.config.paths.outbox),
                                                   "var": str(running.config.paths.var)})
    with pytest.raises(OSError, match="another dicom-node is running on"):
        Node(other)
    assert in_flight.exists()  # not swept by the second node


def test_a_port_already_in_use_is_named_in_the_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(make_config(tmp_path, port=port))
        try:
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
                node.start()
        finally:
            node.stop(0)
