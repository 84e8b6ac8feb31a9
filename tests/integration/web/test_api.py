"""The HTTP API against a real Orthanc PACS and a real node: search, request, progress, download, cancel, upload,
and hostile input (no session, wrong role, no CSRF token, path-like IDs, oversized uploads, malformed JSON)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.app import Node
from node.web.auth import Users
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, multi_series_study, write_study
from toolkit.nodeproc import make_config
from toolkit.peers import OrthancPeer, free_port

PASSWORD = "correct horse battery"
FAST_REQUESTS = {"settle_s": 0.2, "rescan_interval_s": 1, "backoff_base_s": 0.5, "backoff_max_s": 2}


class Env:
    def __init__(self, node: Node, base: str, pacs: OrthancPeer, studies: dict[str, StudySpec], root: Path) -> None:
        self.node, self.base, self.pacs, self.studies, self.root = node, base, pacs, studies, root
        self.csrf = ""

    @contextlib.contextmanager
    def client(self, user: str | None = "op") -> Iterator[httpx.Client]:
        """A client logged in through the login form (session cookie + CSRF token taken from a page)."""
        with httpx.Client(base_url=self.base, timeout=60, follow_redirects=False) as c:
            if user is not None:
                token = _hidden(c.get("/login").text, "login_token")
                r = c.post("/login", data={"username": user, "password": PASSWORD, "login_token": token,
                                           "next": "/requests"})
                assert r.status_code == 303, r.text
                c.headers["X-CSRF-Token"] = _hidden(c.get("/requests").text, "csrf_token")
            yield c


def _hidden(html: str, name: str) -> str:
    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("web")
    studies = {
        "small": StudySpec(patient_id="WEB001", patient_name="WEB^ALICE", accession="WEBACC1", study_date="20250301",
                           series=[SeriesSpec(series_number=1, series_description="t1_tra", n_slices=12),
                                   SeriesSpec(series_number=2, series_description="t2_sag", orientation="SAG",
                                              n_slices=10)]),
        "many": multi_series_study(5, 8, patient_id="WEB002", patient_name="WEB^BOB", accession="WEBACC2",
                                   study_date="20250302"),
    }
    for key, spec in studies.items():
        write_study(spec, root / "src" / key)
    node_port = free_port()
    with OrthancPeer(root / "orthanc", ae_title="PACS",
                     modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}) as pacs:
        pacs.load([root / "src"])
        config = make_config(
            root / "node", node={"port": node_port},
            peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port, "timeout_s": 10}},
            requests=FAST_REQUESTS, completion={"stable_age_s": 1, "check_interval_s": 0.5},
            web={"port": 0, "max_upload_mb": 1},
        )
        users = Users(config.users_file)
        users.set_user("op", PASSWORD, "operator")
        users.set_user("viewer", PASSWORD, "viewer")
        node = Node(config)
        node.start()
        try:
            assert node.web is not None
            yield Env(node, f"http://127.0.0.1:{node.web.port}", pacs, studies, root)
        finally:
            node.stop(drain_timeout=5)


def wait_request(c: httpx.Client, rid: int, states: tuple[str, ...] = ("done", "failed"), timeout: float = 120) -> Any:
    def final() -> Any:
        doc = c.get(f"/api/requests/{rid}").json()
        return doc if doc["state"] in states else None

    return wait_for(final, timeout=timeout, what=f"request {rid} to reach {states}")


def test_a_search_by_patient_name_with_a_wildcard_finds_the_study_on_the_pacs(env: Env) -> None:
    with env.client("viewer") as c:
        r = c.get("/api/search/studies", params={"patient_name": "WEB^A*"})
        assert r.status_code == 200, r.text
        (found,) = r.json()["studies"]
        assert found["study_uid"] == env.studies["small"].study_uid
        assert found["accession"] == "WEBACC1" and found["patient_name"] == "WEB^ALICE"
        series = c.get(f"/api/search/studies/{found['study_uid']}/series").json()["series"]
        assert sorted(s["number"] for s in series) == [1, 2]


def test_a_search_that_matches_nothing_says_so_in_words(env: Env) -> None:
    with env.client("viewer") as c:
        doc = c.get("/api/search/studies", params={"accession": "NOSUCHACC"}).json()
        assert doc["studies"] == [] and doc["notes"] == ["Nothing found on the PACS for this search."]


def test_a_requested_study_progresses_to_done_and_downloads_as_a_zip_of_its_outputs(env: Env) -> None:
    spec = env.studies["small"]
    with env.client("op") as c:
        r = c.post("/api/requests", json={"studies": [{"accession": "WEBACC1"}], "outputs": ["excel", "nifti"]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert r.headers["location"] == f"/api/requests/{rid}"
        doc = wait_request(c, rid)
        assert doc["state"] == "done", doc
        assert doc["progress"] == 1.0 and doc["studies"][0]["progress"] == 1.0
        assert [x["id"] for x in c.get("/api/requests").json()].count(rid) == 1
        study = c.get(f"/api/studies/{spec.study_uid}").json()
        assert study["state"] == "done" and len(study["series"]) == 2
        outbox = Path(env.node.config.paths.outbox) / study["outbox"]
        with c.stream("GET", f"/api/studies/{spec.study_uid}/download") as z:
            assert z.status_code == 200
            assert z.headers["content-type"] == "application/zip"
            assert "content-length" not in z.headers  # streamed, not built first
            data = b"".join(z.iter_bytes())
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        expected = sorted(f"{outbox.name}/{p.relative_to(outbox).as_posix()}" for p in outbox.rglob("*") if p.is_file())
        assert sorted(names) == expected
        manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(f"{outbox.name}/manifest.json"))
        assert manifest["study_uid"] == spec.study_uid
        for entry in manifest["outputs"]:  # every file byte-identical to the outbox's
            member = zipfile.ZipFile(io.BytesIO(data)).read(f"{outbox.name}/{entry['path']}")
            assert member == (outbox / entry["path"]).read_bytes()
        wb = c.get(f"/api/studies/{spec.study_uid}/workbook")
        assert wb.status_code == 200 and wb.content == (outbox / "metadata.xlsx").read_bytes()
    audit = [json.loads(line) for line in (env.node.config.paths.var / "web" / "audit.log").read_text().splitlines()]
    actions = {(a["action"], a["user"]) for a in audit}
    assert ("request.create", "op") in actions and ("study.download", "op") in actions
    assert not any("WEB^ALICE" in json.dumps(a) for a in audit)  # no patient names in the audit trail


def test_cancel_mid_pull_lets_the_running_series_finish_and_stops_before_the_next(env: Env) -> None:
    spec = env.studies["many"]
    scheduler = env.node.scheduler
    original = scheduler._move_series
    first_move_started, release = threading.Event(), threading.Event()

    def held_move(*args: Any, **kwargs: Any) -> None:
        first_move_started.set()
        assert release.wait(60)
        original(*args, **kwargs)

    scheduler._move_series = held_move  # type: ignore[method-assign]
    try:
        with env.client("op") as c:
            rid = c.post("/api/requests", json={"studies": [{"accession": "WEBACC2"}], "outputs": ["excel"]}).json()["id"]
            assert first_move_started.wait(60)
            r = c.post(f"/api/requests/{rid}/cancel")
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "running"
            assert r.json()["reason"].startswith("cancelled by op") and "finishes first" in r.json()["reason"]
            release.set()
            doc = wait_request(c, rid)
            assert doc["state"] == "failed" and doc["reason"].startswith("cancelled by op"), doc
            (study,) = doc["studies"]
            assert "stopped between two series" in study["reason"]
            assert sum(study["series"].values()) == 5 and study["series"].get("complete") == 1, study
            assert c.post(f"/api/requests/{rid}/cancel").json()["state"] == "failed"  # a second cancel changes nothing
            # The pulled series was processed (what arrived is kept), the other four were never asked for.
            assert wait_for(lambda: c.get(f"/api/studies/{spec.study_uid}").json()["state"] == "done", timeout=60,
                            what="the partial study to be processed")
            assert (Path(env.node.config.paths.inbox) / "failed").glob("web-op-*.yaml")
            again = c.post(f"/api/requests/{rid}/retry")
            assert again.status_code == 201, again.text
            assert wait_request(c, again.json()["id"])["state"] == "done"
    finally:
        scheduler._move_series = original  # type: ignore[method-assign]
        release.set()


def test_an_uploaded_zip_is_imported_and_processed_like_a_pushed_study(env: Env, tmp_path: Path) -> None:
    spec = StudySpec(patient_id="UPL001", accession="UPLACC", series=[SeriesSpec(n_slices=6, rows=16, cols=16)])
    files = write_study(spec, tmp_path / "up")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"study/{f.name}")
    with env.client("op") as c:
        r = c.post("/api/uploads", content=buf.getvalue(), headers={"Content-Type": "application/zip"})
        assert r.status_code == 202, r.text
        state = wait_for(lambda: (d := c.get(r.json()["status"]).json())["state"] != "waiting" and d, timeout=60,
                         what="the upload to be imported")
        assert state["state"] == "imported", state
        assert wait_for(lambda: c.get(f"/api/studies/{spec.study_uid}").json()["state"] == "done", timeout=90,
                        what="the uploaded study to be processed")
        assert c.get(f"/api/studies/{spec.study_uid}").json()["instances"] == 6


def test_without_a_session_or_token_every_api_call_is_401_and_health_stays_open(env: Env) -> None:
    with env.client(None) as c:
        for path in ("/api/requests", "/api/studies", "/api/status", "/api/search/studies?accession=X", "/api/me"):
            r = c.get(path)
            assert r.status_code == 401 and "Log in" in r.json()["error"], path
        assert c.post("/api/requests", json={"studies": [{"accession": "X"}]}).status_code == 401
        assert c.get("/requests").status_code == 303  # a page sends the browser to the login form
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/openapi.json").json()["paths"]["/api/requests"]["post"]["summary"]


def test_a_viewer_can_search_and_read_but_not_ask_cancel_or_upload(env: Env) -> None:
    with env.client("viewer") as c:
        assert c.get("/api/requests").status_code == 200
        for path, body in (("/api/requests", b'{"studies": [{"accession": "X"}]}'), ("/api/requests/1/cancel", b""),
                           ("/api/uploads", b"PK")):
            r = c.post(path, content=body)
            assert r.status_code == 403 and "operator" in r.json()["error"], path


def test_a_session_without_the_csrf_token_cannot_change_anything(env: Env) -> None:
    with env.client("op") as c:
        del c.headers["X-CSRF-Token"]
        before = len(c.get("/api/requests").json())
        r = c.post("/api/requests", json={"studies": [{"accession": "WEBACC1"}]})
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = c.post("/api/requests", json={"studies": [{"accession": "WEBACC1"}]}, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        assert len(c.get("/api/requests").json()) == before


def test_an_api_token_works_without_csrf_and_a_wrong_token_is_401(env: Env) -> None:
    token = Users(env.node.config.users_file).new_token("op", "script")
    with httpx.Client(base_url=env.base, timeout=30) as c:
        assert c.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json() == {
            "user": "op", "role": "operator", "via": "token"}
        assert c.get("/api/me", headers={"Authorization": "Bearer dn_wrong"}).status_code == 401
        r = c.post("/api/requests", content=b"{not json", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = c.post("/api/requests", json={"studies": [{"accession": "A", "patient_id": "B"}], "outputs": ["pdf"]},
                   headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422
        assert any("outputs" in p for p in r.json()["problems"]) and any("studies[0]" in p for p in r.json()["problems"])
        assert c.post("/api/requests", json=["a list"], headers={"Authorization": f"Bearer {token}"}).status_code == 422


@pytest.mark.parametrize("study_id", ["..%2F..%2Fetc%2Fpasswd", "..", "1.2.3%00", "1.2.3%2F..%2F..", "%2e%2e", "x" * 300])
def test_path_like_study_ids_are_404_and_read_nothing(env: Env, study_id: str) -> None:
    with env.client("viewer") as c:
        for suffix in ("", "/download", "/workbook"):
            r = c.get(f"/api/studies/{study_id}{suffix}")
            assert r.status_code == 404, (study_id, suffix, r.text)
            assert b"root:" not in r.content


def test_an_upload_declared_over_the_limit_is_refused_before_any_byte_is_read(env: Env) -> None:
    before = set((env.node.config.paths.inbox / "import").iterdir())
    with socket.create_connection(("127.0.0.1", env.node.web.port), timeout=10) as sock:  # type: ignore[union-attr]
        cookie = _session_cookie(env)
        sock.sendall((f"POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\n"
                      f"Content-Length: {2 << 30}\r\nCookie: {cookie}\r\nX-CSRF-Token: {env.csrf}\r\n\r\n").encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert set((env.node.config.paths.inbox / "import").iterdir()) == before


def test_a_2gb_chunked_upload_is_cut_off_at_the_limit_and_nothing_is_kept(env: Env) -> None:
    before = set((env.node.config.paths.inbox / "import").iterdir())
    cookie = _session_cookie(env)
    sent = 0
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", env.node.web.port), timeout=30) as sock:  # type: ignore[union-attr]
        sock.sendall((f"POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\n"
                      f"Transfer-Encoding: chunked\r\nCookie: {cookie}\r\nX-CSRF-Token: {env.csrf}\r\n\r\n").encode())
        sock.settimeout(0.001)
        answer = b""
        try:
            while sent < 2 << 30:
                try:
                    answer += sock.recv(65536)
                    if answer:
                        break
                except TimeoutError:
                    pass
                sock.settimeout(30)
                sock.sendall(frame)
                sock.settimeout(0.001)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except (ConnectionResetError, TimeoutError):
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 << 20, f"the server read {sent} bytes before cutting the upload off"
    assert set((env.node.config.paths.inbox / "import").iterdir()) == before


def test_a_file_that_is_not_a_zip_is_refused_and_not_kept(env: Env) -> None:
    before = set((env.node.config.paths.inbox / "import").iterdir())
    with env.client("op") as c:
        r = c.post("/api/uploads", content=b"\x00" * 5000, headers={"Content-Type": "application/zip"})
        assert r.status_code == 422 and "not a zip" in r.json()["error"]
    assert set((env.node.config.paths.inbox / "import").iterdir()) == before


def test_wrong_passwords_are_rate_limited_per_user_name(env: Env) -> None:
    with httpx.Client(base_url=env.base, timeout=30) as c:
        codes = []
        for _ in range(7):
            token = _hidden(c.get("/login").text, "login_token")
            form = {"username": "viewer-typo", "password": "wrong", "login_token": token}
            codes.append(c.post("/login", data=form).status_code)
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]  # that user name is locked for the window...
        token = _hidden(c.get("/login").text, "login_token")
        assert c.post("/login", data={"username": "viewer", "password": PASSWORD}).status_code == 403  # no form token
        # ...but not the other users behind the same address (a reverse proxy makes everyone one address).
        r = c.post("/login", data={"username": "op", "password": PASSWORD, "login_token": token, "next": "//evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/requests"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("samesite", "SameSite")


def test_the_status_endpoint_reports_peers_queue_and_checks(env: Env) -> None:
    with env.client("viewer") as c:
        doc = c.get("/api/status", params={"echo": "true"}).json()
        assert doc["healthy"] is True
        assert doc["peers"][0]["reachable"] is True
        assert set(doc["checks"]) >= {"scheduler", "inbox", "processing"}


def test_the_api_answers_while_a_search_waits_on_a_pacs_that_never_answers(env: Env) -> None:
    # A "PACS" that accepts the connection and then says nothing: the C-FIND waits for its timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        conn, _ = silent.accept()
        held.append(conn)
        accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    peers = env.node.config.peers
    peers["silent"] = dataclasses.replace(peers["pacs"], name="silent", port=silent.getsockname()[1], timeout_s=8)
    try:
        with env.client("viewer") as c, env.client("viewer") as other:
            results: list[httpx.Response] = []
            t = threading.Thread(target=lambda: results.append(
                c.get("/api/search/studies", params={"accession": "X", "peer": "silent"})))
            t.start()
            assert accepted.wait(30)
            assert other.get("/api/requests").status_code == 200
            assert other.get("/healthz").status_code == 200
            assert other.get("/requests").status_code == 200
            assert t.is_alive(), "the search should still be waiting on the silent PACS"
            t.join(60)
            (r,) = results
            assert r.status_code == 502 and "could not be reached" in r.json()["error"], r.text
    finally:
        del peers["silent"]
        silent.close()
        for conn in held:
            conn.close()


def _session_cookie(env: Env) -> str:
    with env.client("op") as c:
        env.csrf = c.headers["X-CSRF-Token"]
        return "; ".join(f"{k}={v}" for k, v in c.cookies.items())


def test_a_merged_workbook_stacks_every_study_of_the_request(env: Env) -> None:
    from openpyxl import load_workbook

    with env.client("op") as c:
        r = c.post("/api/requests", json={"studies": [{"accession": "WEBACC1"}, {"accession": "WEBACC2"}],
                                          "outputs": ["excel_merged"]})
        assert r.status_code == 201, r.text
        doc = wait_request(c, r.json()["id"])
        assert doc["state"] == "done", doc
        # Built when the request is filed as done, a moment after its state says so.
        def merged() -> httpx.Response | None:
            w = c.get(f"/api/requests/{doc['id']}/workbook")
            return w if w.status_code == 200 else None

        wb = wait_for(merged, timeout=30, what="the merged workbook")
    path = env.root / "merged.xlsx"
    path.write_bytes(wb.content)
    book = load_workbook(path, read_only=True)
    metadata = list(book["DICOM_Metadata"].iter_rows(values_only=True))
    summary = list(book["Series_Summary"].iter_rows(values_only=True))
    assert metadata[0][0] == summary[0][0] == "Study Folder"
    assert len(metadata) - 1 == 22 + 40 and len(summary) - 1 == 2 + 5
    assert {row[0] for row in summary[1:]} == {"WEB001_20250301_WEBACC1", "WEB002_20250302_WEBACC2"}
    status = env.node.config.paths.outbox / "requests" / f"{doc['request']}.status.yaml"
    line = f"merged_workbook: outbox/requests/{doc['request']}.xlsx"
    assert wait_for(lambda: line in status.read_text(), timeout=30, what="the final status to name the workbook")
