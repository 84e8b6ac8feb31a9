"""Users file, passwords, API tokens, sessions and login limits, on their own."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from node.web.auth import LoginLimiter, Principal, Role, Sessions, UserError, Users, allows


def test_a_user_is_stored_with_an_argon2_hash_in_a_private_file(tmp_path: Path) -> None:
    users = Users(tmp_path / "web" / "users.json")
    users.set_user("alice", "a long enough password", "operator")
    path = tmp_path / "web" / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["users"]["alice"]["hash"].startswith("$argon2id$")
    assert "a long enough password" not in path.read_text()
    assert users.verify("alice", "a long enough password") == Principal("alice", Role.OPERATOR, "session")
    assert users.verify("alice", "a long enough passwore") is None
    assert users.verify("bob", "a long enough password") is None


@pytest.mark.parametrize(("name", "password", "role", "words"), [
    ("", "a long enough password", "viewer", "user name"),
    ("../../etc", "a long enough password", "viewer", "user name"),
    ("x" * 65, "a long enough password", "viewer", "user name"),
    ("alice", "short", "viewer", "at least 10"),
    ("alice", "a long enough password", "admin", "role"),
])
def test_bad_names_short_passwords_and_unknown_roles_are_refused(tmp_path: Path, name: str, password: str,
                                                                 role: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        Users(tmp_path / "users.json").set_user(name, password, role)
    assert not (tmp_path / "users.json").exists()


def test_a_change_made_by_another_process_is_seen_without_a_restart(tmp_path: Path) -> None:
    running = Users(tmp_path / "users.json")
    assert running.verify("carol", "another long password") is None
    Users(tmp_path / "users.json").set_user("carol", "another long password", "viewer")
    assert running.verify("carol", "another long password") is not None
    Users(tmp_path / "users.json").remove_user("carol")
    assert running.verify("carol", "another long password") is None


def test_a_token_is_kept_only_as_a_hash_and_dies_with_its_user(tmp_path: Path) -> None:
    users = Users(tmp_path / "users.json")
    users.set_user("script", "a long enough password", "viewer")
    token = users.new_token("script", "nightly export")
    assert token.startswith("dn_") and token not in (tmp_path / "users.json").read_text()
    assert users.token_principal(token) == Principal("script", Role.VIEWER, "token")
    assert users.token_principal(token + "x") is None
    with pytest.raises(UserError):
        users.new_token("nobody", "x")
    users.remove_user("script")
    assert users.token_principal(token) is None


def test_a_file_that_is_not_a_users_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a dicom-node users file"):
        Users(tmp_path / "users.json").names()


def test_sessions_expire_and_logout_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(lifetime_s=60)
    sid, session = sessions.create(Principal("alice", Role.VIEWER, "session"))
    assert sessions.get(sid) is session and len(session.csrf) >= 32
    assert sessions.get("forged") is None and sessions.get(None) is None
    now = time.time()
    monkeypatch.setattr("node.web.auth.time.time", lambda: now + 61)
    assert sessions.get(sid) is None
    monkeypatch.undo()
    sid2, _ = sessions.create(Principal("alice", Role.VIEWER, "session"))
    sessions.drop(sid2)
    assert sessions.get(sid2) is None


def test_the_session_table_stays_bounded() -> None:
    sessions = Sessions(lifetime_s=60, max_sessions=10)
    sids = [sessions.create(Principal(f"u{i}", Role.VIEWER, "session"))[0] for i in range(25)]
    assert sum(sessions.get(s) is not None for s in sids) == 10
    assert sessions.get(sids[-1]) is not None


def test_the_login_limit_is_per_user_name_and_looser_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = LoginLimiter(attempts=3, window_s=60, per_address=2)
    for _ in range(3):
        limiter.failed("ip:10.0.0.1", "user:alice")
    assert limiter.retry_after("ip:10.0.0.1", "user:alice") > 0
    assert limiter.retry_after("ip:10.0.0.1", "user:bob") == 0  # the address has 3 of its 6
    for _ in range(3):
        limiter.failed("ip:10.0.0.1", "user:bob")
    assert limiter.retry_after("ip:10.0.0.1", "user:carol") > 0  # now the address is spent too
    limiter.succeeded("ip:10.0.0.1", "user:alice")
    assert limiter.retry_after("user:alice") == 0
    later = time.monotonic() + 61
    monkeypatch.setattr("node.web.auth.time.monotonic", lambda: later)
    assert limiter.retry_after("ip:10.0.0.1", "user:bob") == 0


def test_roles_are_ordered_viewer_below_operator() -> None:
    assert allows(Role.OPERATOR, Role.VIEWER) and allows(Role.OPERATOR, Role.OPERATOR)
    assert allows(Role.VIEWER, Role.VIEWER) and not allows(Role.VIEWER, Role.OPERATOR)
