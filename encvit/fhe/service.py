"""`encvit fhe-serve`: the encrypted head's server over HTTP (FastAPI), for clients on other machines.

The server holds public keys and ciphertexts only: an upload with a secret key is refused and nothing is stored.
Every route but /health needs `Authorization: Bearer TOKEN`; a job belongs to the token that made it, and another
token's job answers 404 as if it did not exist. Bodies are raw bytes (``encvit.fhe.wire``). Training runs in worker
threads, outside the event loop, so /health answers while jobs train; one request of a job runs at a time. Junk gets
a 4xx answer with a one-line JSON error, and the server and its other jobs go on.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..common.errors import ConfigError, EncvitError
from .jobs import Job, JobStore
from .tokens import TokenStore
from .wire import (
    JOB_HEADER,
    MEDIA_TYPE,
    PARAMS_HEADER,
    PROTOCOL,
    MismatchError,
    WireError,
    check_value,
    check_versions,
    iteration_of,
    pack,
    params_hash,
    protocol_headers,
    unpack,
    weights_parts,
    weights_state,
)

BINARY_BODY = {
    "requestBody": {"required": True, "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
}


class ServiceError(EncvitError):
    """An HTTP-level refusal (status given) raised before a job is touched."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    """The one-line JSON error every refusal gets."""
    text = " ".join(message.split())  # one line, whatever the message held
    return JSONResponse({"error": text[:500]}, status_code=status, headers=protocol_headers())


def make_app(data: Path, max_upload_mb: float = 256, max_jobs: int = 4, threads: int = 1) -> FastAPI:
    """The FastAPI application serving the jobs under `data` (tokens in data/tokens.json)."""
    app = FastAPI(
        title="encvit encrypted head service",
        version=__version__,
        description="BlindTuner's server: trains a softmax head on CKKS-encrypted features with public keys only.",
    )
    jobs = JobStore(Path(data), threads=threads, max_jobs=max_jobs)
    tokens = TokenStore(Path(data))
    limit = int(max_upload_mb * 1024 * 1024)

    @app.exception_handler(EncvitError)
    async def refused(request: Request, exc: EncvitError):
        status = getattr(exc, "status", None)
        if status is None:
            status = 409 if isinstance(exc, MismatchError) else 400
        return error_response(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(OSError)
    async def machine_limit(request: Request, exc: OSError):  # the server's disk or files, not the request
        if exc.errno == errno.ENOSPC:
            return error_response(507, "the server's disk is full: nothing of this request was kept")
        return error_response(500, f"the server could not read or write its files ({exc.strerror or exc})")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: one line for the client, the server goes on
        return error_response(500, f"the server failed on this request ({type(exc).__name__}); other jobs go on")

    def owner_of(request: Request) -> str:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        owner = tokens.owner(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if owner is None:
            raise ServiceError(401, "a valid token is needed: send Authorization: Bearer TOKEN")
        check_versions(request.headers)
        return owner

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServiceError(
                413, f"a body of {int(declared) / 2**20:.1f} MB is over --max-upload-mb {max_upload_mb:g}"
            )
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"the body is over --max-upload-mb {max_upload_mb:g}")
            chunks.append(chunk)
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != MEDIA_TYPE:
            raise ServiceError(415, f"the body must be {MEDIA_TYPE}, got {content_type or 'no content type'}")
        return b"".join(chunks)

    def job_of(request: Request, job_id: str, owner: str) -> Job:
        job = jobs.get(job_id, owner)
        check_value(request.headers, JOB_HEADER, job.id)
        check_value(request.headers, PARAMS_HEADER, job.state["params"])
        return job

    def answer(job: Job, payload: dict, iteration: int | None = None) -> JSONResponse:
        return JSONResponse(payload, headers=protocol_headers(job.state["params"], job.id, iteration))

    def binary(job: Job, parts: dict, iteration: int) -> Response:
        headers, body = pack(parts)
        return Response(
            body, media_type=MEDIA_TYPE, headers={**headers, **protocol_headers(job.state["params"], job.id, iteration)}
        )

    async def locked(job: Job, work):
        def run():
            with job.lock:
                return work()

        return await run_in_threadpool(run)

    @app.get("/health", summary="Whether the server is up (no token needed)")
    async def health():
        return JSONResponse({"status": "ok", "protocol": PROTOCOL, "version": __version__}, headers=protocol_headers())

    @app.get("/jobs", summary="The caller's jobs")
    async def list_jobs(request: Request):
        owner = owner_of(request)
        states = await run_in_threadpool(jobs.owned, owner)
        keys = ("id", "status", "created", "iteration", "chunks")
        return JSONResponse([{k: s[k] for k in keys} for s in states], headers=protocol_headers())

    @app.post("/jobs", status_code=201, summary="Start a job with the client's public keys", openapi_extra=BINARY_BODY)
    async def create_job(
        request: Request,
        preset: str,
        features: int,
        classes: int,
        batch_size: int,
        softmax_radius: float,
        momentum: float,
        keep: bool = False,
    ):
        owner = owner_of(request)
        from .params import PRESETS

        if preset not in PRESETS:
            raise ServiceError(400, f"preset {preset!r} is not one of {', '.join(PRESETS)}")
        check_value(request.headers, PARAMS_HEADER, params_hash(PRESETS[preset]))
        public = await body_of(request)
        settings = dict(
            preset=preset,
            features=features,
            classes=classes,
            batch_size=batch_size,
            softmax_radius=softmax_radius,
            momentum=momentum,
        )
        job = await run_in_threadpool(jobs.create, owner, settings, public, keep)
        return JSONResponse(job.status(), status_code=201, headers=protocol_headers(job.state["params"], job.id))

    @app.get("/jobs/{job_id}", summary="A job's state: chunks held, iteration, counts")
    async def job_status(request: Request, job_id: str):
        owner = owner_of(request)
        job = await run_in_threadpool(jobs.get, job_id, owner)
        return answer(job, await locked(job, job.status))

    @app.delete("/jobs/{job_id}", summary="Delete a job and everything it stored")
    async def delete_job(request: Request, job_id: str):
        owner = owner_of(request)
        await run_in_threadpool(jobs.delete, job_id, owner)
        return JSONResponse({"deleted": job_id}, headers=protocol_headers())

    @app.put(
        "/jobs/{job_id}/{kind}/{index}",
        summary="Upload training or validation chunk INDEX, in order",
        openapi_extra=BINARY_BODY,
    )
    async def put_chunk(request: Request, job_id: str, kind: str, index: int, count: int | None = None):
        owner = owner_of(request)
        if kind not in ("train", "validation"):
            raise ServiceError(404, f"no route for chunks of kind {kind[:40]!r}: train or validation")
        if not 0 <= index < 1_000_000:
            raise ServiceError(400, f"chunk index must be from 0 to 999999, got {index}")
        job = await run_in_threadpool(job_of, request, job_id, owner)
        parts = unpack(request.headers, await body_of(request))
        return answer(job, await locked(job, lambda: job.put_chunk(kind, index, parts, count)))

    @app.put("/jobs/{job_id}/weights", summary="Fresh encrypted weights for an iteration", openapi_extra=BINARY_BODY)
    async def put_weights(request: Request, job_id: str):
        owner = owner_of(request)
        job = await run_in_threadpool(job_of, request, job_id, owner)
        iteration = iteration_of(request.headers)
        state = weights_state(unpack(request.headers, await body_of(request)))
        return answer(job, await locked(job, lambda: job.put_weights(iteration, state)), iteration)

    @app.get("/jobs/{job_id}/weights", summary="The exhausted encrypted weights at an iteration, for a refresh")
    async def get_weights(request: Request, job_id: str, names: str = "u,w"):
        owner = owner_of(request)
        job = await run_in_threadpool(job_of, request, job_id, owner)
        iteration = iteration_of(request.headers)
        state = await locked(job, lambda: job.get_weights(iteration, names.split(",")))
        return binary(job, weights_parts({name: {"update": items} for name, items in state.items()}), iteration)

    @app.post("/jobs/{job_id}/step", summary="Take Nesterov step ITERATION on the given chunks")
    async def step(request: Request, job_id: str, blocks: str, lr: float):
        owner = owner_of(request)
        job = await run_in_threadpool(job_of, request, job_id, owner)
        iteration = iteration_of(request.headers)
        if not all(b.isdigit() and len(b) < 7 for b in blocks.split(",")):
            raise WireError(f"blocks must be comma-separated chunk numbers, got {blocks[:40]!r}")
        if not math.isfinite(lr):
            raise WireError(f"lr must be a finite number, got {lr}")
        chosen = [int(b) for b in blocks.split(",")]
        return answer(job, await locked(job, lambda: job.step(iteration, chosen, lr)), iteration)

    @app.get("/jobs/{job_id}/validation-logits", summary="Encrypted validation logits under an iteration's weights")
    async def validation_logits(request: Request, job_id: str):
        owner = owner_of(request)
        job = await run_in_threadpool(job_of, request, job_id, owner)
        iteration = iteration_of(request.headers)
        logits = await locked(job, lambda: job.validation_logits(iteration))
        return binary(job, {f"block{b}": items for b, items in enumerate(logits)}, iteration)

    @app.post("/jobs/{job_id}/finish", summary="End a job: its ciphertexts are deleted unless kept")
    async def finish(request: Request, job_id: str, keep: bool = False):
        owner = owner_of(request)
        job = await run_in_threadpool(job_of, request, job_id, owner)
        return answer(job, await locked(job, lambda: job.finish(keep)))

    return app


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, certfile: str | None, keyfile: str | None, insecure: bool) -> None:
    """Refuse to serve another address than loopback without TLS, unless the operator says --insecure."""
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path} is not a file")
    if not is_loopback(host) and certfile is None and not insecure:
        raise ConfigError(
            f"--host {host} reaches other machines: give --ssl-certfile and --ssl-keyfile (or serve behind a TLS "
            "proxy on 127.0.0.1), or --insecure to send tokens and ciphertexts in the clear"
        )


def serve(
    data: Path,
    host: str,
    port: int,
    certfile: str | None = None,
    keyfile: str | None = None,
    max_upload_mb: float = 256,
    max_jobs: int = 4,
    threads: int = 1,
) -> None:
    """Bind HOST:PORT (0: any free port), print `serving on URL` once it listens, and serve until stopped."""
    import uvicorn

    app = make_app(data, max_upload_mb, max_jobs, threads)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    scheme = "https" if certfile else "http"
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(
        app, ssl_certfile=certfile, ssl_keyfile=keyfile, log_level="warning", access_log=False, timeout_keep_alive=30
    )
    print(f"serving on {scheme}://{shown}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
