"""A running node fed bad request files keeps running; the CLI verbs request, status and find."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

import daemon
from node.app import Node
from tests.support.requests import FAST, status
from tests.support.waiting import wait_for
from toolkit.nodeproc import config_dict
from toolkit.peers import echoscu

pytestmark = pytest.mark.integration

BAD = {
    "syntax.yaml": b"studies:\n  - accession: [A1\n",
    "unknown-key.yaml": b"studies:\n  - accession: A1\n    acession: A2\n",
    "types.yml": b"studies:\n  - accession: A1\nseries_filter:\n  min_instances: ten\n",
    "empty.yaml": b"studies: []\n",
    "peer.yaml": b"peer: nope\nstudies:\n  - accession: A1\n",
    "garbage.yaml": bytes(range(256)) * 64,
    "huge.csv": b"AccessionNumber\n" + b"A1\n" * 400_000,
}


def test_bad_request_files_end_in_failed_with_a_reason_and_the_node_keeps_running(start_node: Callable[..., Node]) -> None:
    node = start_node(requests=FAST)
    inbox = node.config.paths.inbox
    for name, content in BAD.items():
        (inbox / name).write_bytes(content)  # written in place, not renamed: picked up once settled
    (inbox / "good.yaml").write_text("studies:\n  - accession: A1\n", encoding="utf-8")
    for name in BAD:
        wait_for((inbox / "failed" / f"{name}.error.txt").exists, 30, f"{name} refused")
    reasons = {name: (inbox / "failed" / f"{name}.error.txt").read_text(encoding="utf-8") for name in BAD}
    assert "At line 3, column 1: YAML syntax error" in reasons["syntax.yaml"]
    assert "At 'studies[0]': Additional properties are not allowed ('acession' was unexpected)" in reasons["unknown-key.yaml"]
    assert "At 'series_filter.min_instances': 'ten' is not of type 'integer'" in reasons["types.yml"]
    assert "At 'studies': [] should be non-empty" in reasons["empty.yaml"]
    assert "At 'peer': unknown peer 'nope'; configured peers: pacs" in reasons["peer.yaml"]
    assert "binary file" in reasons["garbage.yaml"]
    assert "larger than the limit of 1048576 bytes" in reasons["huge.csv"]
    # The good one is accepted and retried against the peer nobody listens on; the node still answers.
    doc = wait_for(lambda: status(node, "good").get("queries", [{}])[0].get("attempts"), 30, "a first attempt")
    assert doc
    assert "cannot connect" in status(node, "good")["queries"][0]["reason"]
    assert echoscu("127.0.0.1", node.config.node.port, "DICOMNODE")


def test_the_request_cli_writes_a_request_the_node_accepts_and_status_lists_it(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node(requests=FAST)
    config_file = tmp_path / "node.yaml"
    data = config_dict(tmp_path, port=node.config.node.port, requests=FAST)
    data["paths"] = {"inbox": str(node.config.paths.inbox), "outbox": str(node.config.paths.outbox),
                     "var": str(node.config.paths.var)}
    data["peers"] = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": node.config.peers["pacs"].port}}
    config_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        assert daemon.main(["--config", str(config_file), "request", "--accession", "X1", "--accession", "X2",
                            "--name", "cli", "--output", "excel", "--priority", "2"]) == 0
    assert out.getvalue().strip().endswith("cli.yaml")
    doc = wait_for(lambda: status(node, "cli"), 30, "the status file")
    assert [q["query"] for q in doc["queries"]] == [{"accession": "X1"}, {"accession": "X2"}]
    assert (doc["priority"], doc["outputs"]) == (2, ["excel"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert daemon.main(["--config", str(config_file), "status", "--no-echo"]) == 0
    # The node may already have started it: queued or running, but listed either way.
    assert re.search(r"^requests: (queued|running) 1$", out.getvalue(), re.M), out.getvalue()
    assert re.search(r"^  request cli: (queued|running)  peer pacs$", out.getvalue(), re.M), out.getvalue()


def test_the_request_cli_refuses_a_name_that_is_not_a_plain_file_name(tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(tmp_path)), encoding="utf-8")
    assert daemon.main(["--config", str(config_file), "request", "--accession", "X1", "--name", "../escape"]) == 2
    assert not (tmp_path / "escape.yaml").exists()
    inbox = tmp_path / "inbox"
    assert not inbox.exists() or not any(inbox.iterdir())
