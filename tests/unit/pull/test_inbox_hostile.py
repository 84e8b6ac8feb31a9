"""Hostile request files: each gets one outcome, fast, with a located and bounded reason, and none can freeze
the node (catastrophic regular expressions, deep nesting, odd names, odd encodings, odd file types)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.pull.inbox import Inbox
from node.pull.requests import MAX_NESTING, RequestError, parse
from node.pull.scheduler import Scheduler
from node.store.store import Store
from toolkit.nodeproc import make_config

REPO = Path(__file__).resolve().parents[3]
GOOD = "studies:\n  - accession: A1\n"


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    config = make_config(tmp_path, requests={"settle_s": 0})
    store = Store(config.paths)
    try:
        yield Inbox(config, store, Scheduler(config, store))
    finally:
        store.close()


def drop_and_take(inbox: Inbox, name: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(inbox.root), name if isinstance(name, bytes) else name.encode())
    with open(path, "wb") as fh:
        fh.write(data)
    inbox.rescan()
    inbox.process_pending(time.time() + 60)


def left_in_root(inbox: Inbox) -> list[str]:
    return sorted(p.name for p in inbox.root.iterdir() if p.name not in ("active", "done", "failed", "import"))


def test_a_catastrophic_regular_expression_is_matched_in_linear_time() -> None:
    # Python's backtracking re takes exponential time on this and holds the GIL, freezing the receiver too.
    code = ("from node.pull.requests import SeriesFilter; f = SeriesFilter(include=('(.*.*)*z',)); "
            "print(f.verdict({'SeriesDescription': 'a' * 5000}, 10))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "matches no include pattern" in result.stdout


def test_a_pattern_that_needs_backtracking_is_refused_with_its_location() -> None:
    with pytest.raises(RequestError) as err:
        parse("r.yaml", (GOOD + "series_filter:\n  include: ['(a)\\1']\n").encode(), ["pacs"])
    assert err.value.problems[0].startswith("At 'series_filter.include[0]': not a regular expression RE2 accepts")


@pytest.mark.parametrize("text", ["[" * 15000 + "]" * 15000, "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 200)),
                                  "- " * 5000 + "x\n"])
def test_deep_nesting_is_refused_with_its_location(text: str) -> None:
    with pytest.raises(RequestError) as err:
        parse("r.yaml", text.encode(), ["pacs"])
    assert f"nested deeper than {MAX_NESTING} levels" in err.value.problems[0]
    assert err.value.problems[0].startswith("At line ")


def test_an_impossible_not_before_date_is_refused_with_its_location(inbox: Inbox) -> None:
    drop_and_take(inbox, "r.yaml", (GOOD + "not_before: 2026-02-30\n").encode())
    assert left_in_root(inbox) == []
    error = (inbox.root / "failed" / "r.yaml.error.txt").read_text(encoding="utf-8")
    assert "At 'not_before': '2026-02-30' is not an ISO date-time" in error


def test_a_file_name_that_is_not_utf8_is_taken_under_a_safe_name(inbox: Inbox) -> None:
    drop_and_take(inbox, b"caf\xe9.yaml", GOOD.encode())
    assert left_in_root(inbox) == []
    assert [p.name for p in (inbox.root / "active").iterdir()] == ["caf_.yaml"]
    assert inbox.store.query("SELECT name FROM requests") == [("caf_",)]


def test_control_characters_in_a_name_never_reach_the_log_raw(inbox: Inbox, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="node.pull"):
        drop_and_take(inbox, "bad\x1b[31m\nname.yaml", b"not: [valid")
    assert left_in_root(inbox) == []
    assert all("\x1b" not in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)
    assert any("\\x1b[31m\\nname.yaml" in r.getMessage() for r in caplog.records)


def test_a_240_byte_name_is_filed_under_a_shorter_one_with_its_error_text(inbox: Inbox) -> None:
    name = "x" * 240 + ".yaml"
    drop_and_take(inbox, name, b"studies: 3\n")
    assert left_in_root(inbox) == []
    (error,) = (inbox.root / "failed").glob("*.error.txt")
    assert len(error.name.encode()) <= 140
    assert "At 'studies'" in error.read_text(encoding="utf-8")


def test_a_utf16_request_with_a_byte_order_mark_is_accepted(inbox: Inbox) -> None:
    drop_and_take(inbox, "r.yaml", GOOD.encode("utf-16"))
    assert [p.name for p in (inbox.root / "active").iterdir()] == ["r.yaml"]


def test_utf16_without_a_byte_order_mark_is_named_in_the_error(inbox: Inbox) -> None:
    drop_and_take(inbox, "r.yaml", GOOD.encode("utf-16-le"))
    assert "UTF-16 without a byte order mark" in (inbox.root / "failed" / "r.yaml.error.txt").read_text(encoding="utf-8")


def test_an_error_text_quotes_a_bounded_part_of_a_huge_bad_file(inbox: Inbox) -> None:
    csv = "AccessionNumber\n" + "".join(f"bad accession with spaces and / slashes {i}\n" for i in range(20000))
    drop_and_take(inbox, "many.csv", csv.encode())
    error = (inbox.root / "failed" / "many.csv.error.txt").read_text(encoding="utf-8")
    assert len(error) <= 64_100
    assert "more characters" in error


def test_symlinks_fifos_and_folders_named_like_requests_are_skipped_with_one_log_line_each(
    inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    target = inbox.root.parent / "elsewhere.yaml"
    target.write_text(GOOD)
    os.symlink(target, inbox.root / "link.yaml")
    os.mkfifo(inbox.root / "fifo.yaml")
    (inbox.root / "dir.yaml").mkdir()
    with caplog.at_level(logging.WARNING, logger="node.pull.inbox"):
        for _ in range(3):  # three rescans: still one line each
            inbox.rescan()
            inbox.process_pending(time.time() + 60)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("inbox/link.yaml is a symbolic link" in m for m in lines) == 1
    assert sum("inbox/fifo.yaml is not a regular file" in m for m in lines) == 1
    assert sum("inbox/dir.yaml is a folder" in m for m in lines) == 1
    assert inbox.store.query("SELECT COUNT(*) FROM requests") == [(0,)]
    assert target.read_text() == GOOD  # never moved or read through the link
