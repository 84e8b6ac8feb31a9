"""Server-rendered pages (Jinja2, no build step): log in, search and ask, follow requests live, studies, upload, status."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from node.web import service
from node.web.auth import Principal, Role, allows
from node.web.context import LOGIN_COOKIE, SESSION_COOKIE, WebContext, client_of, csrf_of, principal_of, require
from node.web.service import ServiceError

log = logging.getLogger(__name__)

_ENV = Environment(loader=PackageLoader("node.web", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
MAX_FORM_BYTES = 256 * 1024


def render(ctx: WebContext, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    principal = principal_of(ctx, request)
    html = _ENV.get_template(template).render(
        me=principal, csrf=csrf_of(ctx, request), operator=principal is not None and allows(principal.role, Role.OPERATOR),
        **values)
    return HTMLResponse(html, status_code=status)


def error_page(ctx: WebContext, request: Request, exc: ServiceError) -> Response:
    if exc.status == 401:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    return render(ctx, request, "error.html", status=exc.status, message=exc.message, problems=exc.problems)


def _local_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme): an open redirect would make a phishing link."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/requests"


async def _form(request: Request) -> dict[str, list[str]]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise ServiceError(413, "The form is too large.")
    form = await request.form(max_files=0, max_fields=2000)
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
    return out


async def _checked_form(ctx: WebContext, request: Request, role: Role) -> tuple[dict[str, list[str]], Principal]:
    """A posted form and its sender, checked: logged in, allowed, and the form's CSRF token is the session's."""
    form = await _form(request)
    return form, require(ctx, request, role, (form.get("csrf_token") or [""])[0])


def router(ctx: WebContext) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/")
    def home() -> Response:
        return RedirectResponse("/requests", status_code=303)

    @pages.get("/login")
    def login_form(request: Request, next: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(ctx, request, "login.html", login_token=token, next=_local_next(next))
        _set_cookie(ctx, response, LOGIN_COOKIE, token, 600)
        return response

    @pages.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        user = (form.get("username") or [""])[0][:64]
        password = (form.get("password") or [""])[0][:1024]
        target = _local_next((form.get("next") or [""])[0])
        sent = (form.get("login_token") or [""])[0]
        if not sent or not secrets.compare_digest(sent, request.cookies.get(LOGIN_COOKIE, "")):
            raise ServiceError(403, "The login form expired or came from another site. Open the login page again.")
        client = client_of(request)
        keys = (f"ip:{client}", f"user:{user.lower()}")
        wait = ctx.limiter.retry_after(*keys)
        if wait > 0:
            ctx.audit.record(None, "login.throttled", f"user:{user}", client)
            return render(ctx, request, "login.html", status=429, login_token=sent, next=target,
                          error=f"Too many failed logins. Try again in {int(wait) + 1} seconds.")
        principal = await anyio.to_thread.run_sync(ctx.users.verify, user, password)
        if principal is None:
            ctx.limiter.failed(*keys)
            ctx.audit.record(None, "login.failed", f"user:{user}", client)
            return render(ctx, request, "login.html", status=401, login_token=sent, next=target,
                          error="Wrong user name or password.")
        ctx.limiter.succeeded(*keys)
        sid, _session = ctx.sessions.create(principal)
        ctx.audit.record(principal, "login", f"user:{user}", client)
        response = RedirectResponse(target, status_code=303)
        _set_cookie(ctx, response, SESSION_COOKIE, sid, int(ctx.sessions.lifetime_s))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @pages.post("/logout")
    async def logout(request: Request) -> Response:
        _, principal = await _checked_form(ctx, request, Role.VIEWER)
        ctx.sessions.drop(request.cookies.get(SESSION_COOKIE))
        ctx.audit.record(principal, "logout", f"user:{principal.user}", client_of(request))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @pages.get("/search")
    def search(request: Request, peer: str | None = None) -> Response:
        require(ctx, request, Role.VIEWER)
        cfg = ctx.config()
        fields = {k: request.query_params.get(k, "") for k in service.SEARCH_FIELDS}
        result: dict[str, Any] | None = None
        error = None
        if any(v.strip() for v in fields.values()):
            try:
                result = service.search_studies(cfg, fields, peer)
            except ServiceError as exc:
                error = exc.message
        return render(ctx, request, "search.html", fields=fields, result=result, error=error,
                      peers=list(cfg.peers), peer=peer or cfg.default_peer.name)

    @pages.post("/requests/new")
    async def new_request(request: Request) -> Response:
        form, principal = await _checked_form(ctx, request, Role.OPERATOR)
        uids = [u for u in form.get("study_uid", []) if u]
        if not uids:
            raise ServiceError(422, "Select at least one study (tick its box) before asking for it.")
        body: dict[str, Any] = {"peer": (form.get("peer") or [ctx.config().default_peer.name])[0],
                                "studies": [{"study_uid": u} for u in uids]}
        outputs = [o for o in form.get("outputs", []) if o]
        if outputs:
            body["outputs"] = outputs
        rid = await anyio.to_thread.run_sync(ctx.actions.create_request, body, principal.user)
        ctx.audit.record(principal, "request.create", f"request:{rid}", client_of(request), studies=len(uids))
        return RedirectResponse(f"/requests/{rid}", status_code=303)

    @pages.get("/requests")
    def requests_page(request: Request) -> Response:
        require(ctx, request, Role.VIEWER)
        return render(ctx, request, "requests.html", requests=service.list_requests(ctx.store, 100))

    @pages.get("/requests/{rid}")
    def request_page(request: Request, rid: int) -> Response:
        require(ctx, request, Role.VIEWER)
        return render(ctx, request, "request.html", r=service.request_detail(ctx.store, rid))

    @pages.post("/requests/{rid}/cancel")
    async def cancel(request: Request, rid: int) -> Response:
        _, principal = await _checked_form(ctx, request, Role.OPERATOR)
        await anyio.to_thread.run_sync(ctx.actions.cancel, rid, principal.user)
        ctx.audit.record(principal, "request.cancel", f"request:{rid}", client_of(request))
        return RedirectResponse(f"/requests/{rid}", status_code=303)

    @pages.post("/requests/{rid}/retry")
    async def retry(request: Request, rid: int) -> Response:
        _, principal = await _checked_form(ctx, request, Role.OPERATOR)
        new = await anyio.to_thread.run_sync(ctx.actions.retry, rid, principal.user)
        ctx.audit.record(principal, "request.retry", f"request:{rid}", client_of(request), new=new)
        return RedirectResponse(f"/requests/{new}", status_code=303)

    @pages.get("/studies")
    def studies(request: Request) -> Response:
        require(ctx, request, Role.VIEWER)
        return render(ctx, request, "studies.html", studies=service.list_studies(ctx.store, 500))

    @pages.get("/studies/{study_uid}")
    def study(request: Request, study_uid: str) -> Response:
        require(ctx, request, Role.VIEWER)
        return render(ctx, request, "study.html", s=service.study_detail(ctx.store, ctx.config().paths.outbox, study_uid))

    @pages.get("/upload")
    def upload(request: Request) -> Response:
        require(ctx, request, Role.OPERATOR)
        return render(ctx, request, "upload.html", limit_mb=ctx.config().web.max_upload_mb)

    @pages.get("/status")
    def status(request: Request) -> Response:
        require(ctx, request, Role.VIEWER)
        doc = service.node_status(ctx.config(), ctx.store, dict(ctx.checks()), echo=True)
        return render(ctx, request, "status.html", st=doc)

    return pages


def _set_cookie(ctx: WebContext, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=ctx.config().web.secure_cookies)
