"""The command line: options go before or after the verb, and a read-only verb never creates anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import daemon
from toolkit.nodeproc import config_dict


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path / "root")), encoding="utf-8")
    return path


@pytest.mark.parametrize("order", ["before", "after"])
def test_config_and_log_level_are_accepted_before_or_after_the_verb(tmp_path: Path, order: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    options = ["--config", str(config), "--log-level", "WARNING"]
    argv = [*options, "check-config"] if order == "before" else ["check-config", *options]
    assert daemon.main(argv) == daemon.EXIT_OK
    assert capsys.readouterr().out.startswith(f"# {config}: valid")


def test_status_with_a_config_whose_folders_do_not_exist_creates_nothing(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert daemon.main(["status", "--config", str(config), "--no-echo"]) == daemon.EXIT_OK
    assert "none yet (the node has not run with these paths)" in capsys.readouterr().out
    assert not (tmp_path / "root").exists()


def test_a_missing_config_file_is_an_error_not_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["status", "--config", str(tmp_path / "nope.yaml"), "--no-echo"]) == daemon.EXIT_CONFIG
    assert "file not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_user_add_list_passwd_token_and_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from node import config as config_mod
    from node.web.auth import Users

    config = write_config(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("first long password\n"))
    assert daemon.main(["user", "add", "alice", "--role", "operator", "--password-stdin", "--config", str(config)]) == 0
    users = Users(config_mod.load(config).users_file)
    assert users.verify("alice", "first long password") is not None
    assert daemon.main(["user", "list", "--config", str(config)]) == 0
    assert "alice\toperator" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("second long password\n"))
    assert daemon.main(["user", "passwd", "alice", "--password-stdin", "--config", str(config)]) == 0
    assert users.verify("alice", "first long password") is None
    assert users.verify("alice", "second long password") is not None and users.names() == {"alice": "operator"}
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert daemon.main(["user", "passwd", "alice", "--password-stdin", "--config", str(config)]) == daemon.EXIT_CONFIG
    assert "at least 10" in capsys.readouterr().err
    assert daemon.main(["user", "passwd", "bob", "--password-stdin", "--config", str(config)]) == daemon.EXIT_FAILURE
    assert daemon.main(["user", "token", "alice", "--label", "export", "--config", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    assert users.token_principal(token) is not None
    assert daemon.main(["user", "remove", "alice", "--config", str(config)]) == 0
    assert users.token_principal(token) is None and users.names() == {}


def test_cancel_of_an_unknown_request_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert daemon.main(["cancel", "nope", "--config", str(config)]) == daemon.EXIT_FAILURE
    assert "No request named 'nope'" in capsys.readouterr().err
