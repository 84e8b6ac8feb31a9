"""The JSON API under /api (described at /openapi.json): search, requests, studies, downloads, uploads, status."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from node.pull.requests import SCHEMA as REQUEST_SCHEMA
from node.web import service, transfer
from node.web.auth import Role
from node.web.context import WebContext, client_of, require
from node.web.service import ServiceError

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}}
_ZIP_BODY = {"requestBody": {"required": True, "content": {"application/zip": {"schema": {"type": "string",
                                                                                          "format": "binary"}}}}}


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> Any:
    """The body as JSON, refused past `limit` bytes (also when sent chunked, with no length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"The request body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServiceError(413, f"The request body is larger than {limit} bytes.")
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServiceError(400, f"The request body is not valid JSON ({str(exc)[:200]}).") from None


def router(ctx: WebContext) -> APIRouter:
    api = APIRouter(prefix="/api")

    @api.get("/me", summary="Who the caller is")
    def me(request: Request) -> dict[str, str]:
        p = require(ctx, request, Role.VIEWER)
        return {"user": p.user, "role": p.role.value, "via": p.via}

    @api.get("/search/studies", summary="STUDY-level C-FIND on a configured PACS",
             description="Fields: patient_id, patient_name (wildcards * ?), accession, study_date (YYYYMMDD or "
                         "range YYYYMMDD-YYYYMMDD), modality. At least one.")
    def search_studies(request: Request, peer: str | None = None) -> dict[str, Any]:
        require(ctx, request, Role.VIEWER)
        params = {k: v for k, v in request.query_params.items() if k != "peer"}
        return service.search_studies(ctx.config(), params, peer)

    @api.get("/search/studies/{study_uid}/series", summary="SERIES-level C-FIND of one study")
    def search_series(request: Request, study_uid: str, peer: str | None = None) -> dict[str, Any]:
        require(ctx, request, Role.VIEWER)
        return service.search_series(ctx.config(), study_uid, peer)

    @api.post("/requests", status_code=201, openapi_extra=_REQUEST_BODY,
              summary="Ask for studies (the request file's schema, as JSON)")
    async def create_request(request: Request) -> JSONResponse:
        principal = require(ctx, request, Role.OPERATOR)
        body = await read_json(request)
        rid = await anyio.to_thread.run_sync(ctx.actions.create_request, body, principal.user)
        ctx.audit.record(principal, "request.create", f"request:{rid}", client_of(request),
                         studies=len(body.get("studies", [])))
        doc = await anyio.to_thread.run_sync(service.request_detail, ctx.store, rid)
        return JSONResponse(doc, status_code=201, headers={"Location": f"/api/requests/{rid}"})

    @api.get("/requests", summary="Requests, newest first, with per-study progress")
    def list_requests(request: Request, limit: int = 100) -> list[dict[str, Any]]:
        require(ctx, request, Role.VIEWER)
        return service.list_requests(ctx.store, max(1, min(limit, 1000)))

    @api.get("/requests/{rid}", summary="One request: state, queries, studies, series progress")
    def get_request(request: Request, rid: int) -> dict[str, Any]:
        require(ctx, request, Role.VIEWER)
        return service.request_detail(ctx.store, rid)

    @api.post("/requests/{rid}/cancel", summary="Cancel a request",
              description="Work not started is dropped at once; a running C-MOVE finishes its current series, then "
                          "stops (the status says so). The request ends failed with 'cancelled by <user>'.")
    def cancel_request(request: Request, rid: int) -> dict[str, Any]:
        principal = require(ctx, request, Role.OPERATOR)
        doc = ctx.actions.cancel(rid, principal.user)
        ctx.audit.record(principal, "request.cancel", f"request:{rid}", client_of(request))
        return service.with_progress(rid, doc)

    @api.post("/requests/{rid}/retry", status_code=201, summary="Run a failed request again (as a new request)")
    def retry_request(request: Request, rid: int) -> JSONResponse:
        principal = require(ctx, request, Role.OPERATOR)
        new = ctx.actions.retry(rid, principal.user)
        ctx.audit.record(principal, "request.retry", f"request:{rid}", client_of(request), new=new)
        return JSONResponse(service.request_detail(ctx.store, new), status_code=201,
                            headers={"Location": f"/api/requests/{new}"})

    @api.get("/requests/{rid}/workbook", summary="The request's merged workbook (outputs: excel_merged)",
             response_class=FileResponse)
    def request_workbook(request: Request, rid: int) -> Response:
        principal = require(ctx, request, Role.VIEWER)
        doc = service.request_detail(ctx.store, rid)
        path = ctx.actions.inbox.merged_workbook_path(str(doc["request"]))
        if not path.is_file():
            raise ServiceError(404, f"request {doc['request']} has no merged workbook (yet)")
        ctx.audit.record(principal, "request.download_workbook", f"request:{rid}", client_of(request))
        return FileResponse(path, filename=path.name,
                            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")

    @api.get("/studies", summary="Studies in the node's store, newest first")
    def list_studies(request: Request, limit: int = 500) -> list[dict[str, Any]]:
        require(ctx, request, Role.VIEWER)
        return service.list_studies(ctx.store, max(1, min(limit, 5000)))

    @api.get("/outbox", summary="Published study folders in the outbox")
    def list_outbox(request: Request) -> list[dict[str, Any]]:
        require(ctx, request, Role.VIEWER)
        return [s for s in service.list_studies(ctx.store, 5000) if s["outbox"]]

    @api.get("/studies/{study_uid}", summary="One study: series, outputs, warnings, MR classes")
    def get_study(request: Request, study_uid: str) -> dict[str, Any]:
        require(ctx, request, Role.VIEWER)
        return service.study_detail(ctx.store, ctx.config().paths.outbox, study_uid)

    @api.get("/studies/{study_uid}/download", summary="The study's outputs as a zip (streamed)",
             response_class=StreamingResponse)
    def download(request: Request, study_uid: str) -> Response:
        principal = require(ctx, request, Role.VIEWER)
        folder = service.study_folder(ctx.store, ctx.config().paths.outbox, study_uid)
        if folder is None:
            raise ServiceError(404, f"study {study_uid} has no outputs yet")
        files = transfer.folder_files(folder)
        ctx.audit.record(principal, "study.download", f"study:{study_uid}", client_of(request), files=len(files))
        return StreamingResponse(transfer.zip_stream(folder, files), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{folder.name}.zip"'})

    @api.get("/studies/{study_uid}/workbook", summary="The study's metadata.xlsx", response_class=FileResponse)
    def workbook(request: Request, study_uid: str) -> Response:
        principal = require(ctx, request, Role.VIEWER)
        folder = service.study_folder(ctx.store, ctx.config().paths.outbox, study_uid)
        path = folder / "metadata.xlsx" if folder else None
        if path is None or not path.is_file() or path.is_symlink():
            raise ServiceError(404, f"study {study_uid} has no workbook")
        ctx.audit.record(principal, "study.download_workbook", f"study:{study_uid}", client_of(request))
        return FileResponse(path, filename=f"{folder.name if folder else 'study'}.xlsx",
                            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")

    @api.get("/studies/{study_uid}/previews/{name}", summary="A preview PNG of the study", response_class=FileResponse)
    def preview(request: Request, study_uid: str, name: str) -> Response:
        require(ctx, request, Role.VIEWER)
        return FileResponse(service.preview_path(ctx.store, ctx.config().paths.outbox, study_uid, name),
                            media_type="image/png")

    @api.post("/uploads", status_code=202, openapi_extra=_ZIP_BODY,
              summary="Upload a zip of DICOM files, imported like a drop into inbox/import/")
    async def upload(request: Request) -> JSONResponse:
        principal = require(ctx, request, Role.OPERATOR)
        cfg = ctx.config()
        if not cfg.imports.enabled:
            raise ServiceError(409, "Uploads are off on this node (import.enabled is false).")
        if not ctx.disk_ok():
            raise ServiceError(507, "The node's disk is nearly full; uploads are refused until space is freed.")
        limit = int(cfg.web.max_upload_mb * (1 << 20))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServiceError(413, f"The upload ({int(declared) >> 20} MiB) is larger than the limit of "
                                    f"{cfg.web.max_upload_mb:g} MiB (web.max_upload_mb).")
        up = await anyio.to_thread.run_sync(transfer.Upload.begin, cfg.paths.inbox / "import", principal.user, limit)
        try:
            async for chunk in request.stream():
                await anyio.to_thread.run_sync(up.write, chunk)
            await anyio.to_thread.run_sync(up.finish)
        except transfer.UploadTooLarge:
            up.abort()
            raise ServiceError(413, f"The upload is larger than the limit of {cfg.web.max_upload_mb:g} MiB "
                                    "(web.max_upload_mb); nothing was kept.") from None
        except transfer.NotAZip:
            raise ServiceError(422, "The upload is not a zip file; nothing was kept.") from None
        except BaseException:
            up.abort()
            raise
        ctx.audit.record(principal, "upload", f"import:{up.name}", client_of(request), bytes=up.received)
        return JSONResponse({"name": up.name, "bytes": up.received, "state": "waiting",
                             "status": f"/api/uploads/{up.name}"}, status_code=202)

    @api.get("/uploads/{name}", summary="What the importer made of an upload")
    def upload_state(request: Request, name: str) -> dict[str, str]:
        require(ctx, request, Role.VIEWER)
        state = transfer.upload_state(ctx.config().paths.inbox / "import", name)
        if state is None:
            raise ServiceError(404, f"no upload {name[:120]!r}")
        return state

    @api.get("/status", summary="Listener, peers (C-ECHO with echo=true), disk, queue, last errors")
    def status(request: Request, echo: bool = False) -> dict[str, Any]:
        require(ctx, request, Role.VIEWER)
        return service.node_status(ctx.config(), ctx.store, dict(ctx.checks()), echo)

    @api.get("/events", summary="Server-sent events: the request list's progress whenever it changes",
             response_class=StreamingResponse)
    async def events(request: Request) -> Response:
        require(ctx, request, Role.VIEWER)
        return StreamingResponse(_progress_events(ctx, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return api


async def _progress_events(ctx: WebContext, request: Request) -> AsyncIterator[str]:
    last = None
    quiet = 0.0
    yield "retry: 2000\n\n"
    while not ctx.stopping.is_set() and not await request.is_disconnected():
        text = await anyio.to_thread.run_sync(ctx.progress)
        if text != last:
            last = text
            quiet = 0.0
            yield f"event: progress\ndata: {text}\n\n"
        elif quiet >= 15:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(1.0)
        quiet += 1.0
