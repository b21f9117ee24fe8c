"""The web app: a page for people and a JSON API for programs, over one bounded job queue.

FastAPI because the API is the product: request models double as validation and as the OpenAPI
schema at ``/openapi.json``, and the page is a few static files calling that same API, so there is
one code path for both (see the README for why not Gradio).

Routes::

    GET  /                     the page (static/index.html)
    GET  /api/info             model, tasks, samplers, limits (what the page builds its form from)
    GET  /api/health           "ok", the queue's counts, the limits and the memory budget
    POST /api/{task}           task: txt2img, img2img, inpaint, upscale; JSON in, JSON out
    POST /api/{task}?stream=1  the same, answered as NDJSON events: queued (position), progress
                               (step/total), then result or error

A request is checked before it is queued (4xx at once), waits its turn in the
:class:`~latent_diffusion.serve.jobs.JobQueue`, and is cancelled at its next denoising step if the
client disconnects while it waits or runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

import latent_diffusion
from latent_diffusion.sampling import SAMPLERS
from latent_diffusion.serve.jobs import CANCELLED, DONE, FAILED, Job, JobQueue, QueueClosed, QueueFull
from latent_diffusion.serve.schemas import (
    ErrorResponse,
    GenerationResponse,
    Img2ImgRequest,
    InpaintRequest,
    Txt2ImgRequest,
    UpscaleRequest,
)
from latent_diffusion.serve.service import Generator, Limits, RequestError

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass
class ServeSettings:
    """How the server behaves; every field is an ``ldm serve`` option."""

    concurrency: int = 1  # jobs generating at once; more than one only helps with spare cores
    max_waiting: int = 16  # jobs allowed to wait; the next is answered 429
    max_run_seconds: float = 600.0  # a running job is stopped after this long
    max_body_bytes: int = 16 * 2**20  # largest request body (base64 images are 4/3 of the file)
    limits: Limits = field(default_factory=Limits)


class BodySizeLimit:
    """ASGI middleware answering 413 to request bodies over ``max_bytes``.

    Checked on the declared Content-Length, and on the bytes actually received for chunked bodies,
    before the app parses anything, so an oversized upload never sits in memory whole.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        received = 0
        messages: list[dict] = []
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # Chunked upload: read it here (bounded) and replay it to the app.
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await self._refuse(send, received)
                    return
                if not message.get("more_body", False):
                    break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable, size: int) -> None:
        body = json.dumps({"detail": f"request body of {size} bytes is over this server's limit of "
                                     f"{self.max_bytes} bytes; send a smaller image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status,
                        headers={"Retry-After": "5"} if status in (429, 503) else None)


def _field_errors(err: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One line naming each bad field, and the errors as JSON-safe dicts."""
    parts, errors = [], []
    for item in err.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
        errors.append({"loc": [str(p) for p in item.get("loc", ())], "msg": str(item.get("msg")),
                       "type": str(item.get("type"))})
    return "; ".join(parts), errors


async def _follow(job: Job, request: Request) -> AsyncIterator[dict[str, Any]]:
    """Yield the job's snapshot each time it changes, until it finishes; cancel the job when the
    client disconnects first (the caller's ``finally`` covers a cancelled stream as well)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:  # called from worker threads
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:  # the loop is gone (server stopping); nobody is listening
            pass

    job.subscribe(wake)
    try:
        last = None
        checked = loop.time()
        while True:
            changed.clear()
            snapshot = job.snapshot()
            if snapshot != last:
                last = snapshot
                yield snapshot.as_dict()
            if job.finished:
                return
            # Checked on a clock, not only when idle: a job streaming steps is never idle.
            if loop.time() - checked >= DISCONNECT_POLL_S:
                checked = loop.time()
                if await request.is_disconnected():
                    job.cancel("the client disconnected")
            try:
                await asyncio.wait_for(changed.wait(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                pass
    finally:
        job.unsubscribe(wake)


def _failure(job: Job) -> tuple[int, str]:
    """HTTP status and message of a job that did not finish with a result."""
    if job.state == CANCELLED:
        return 503, f"generation stopped: {job.cancel_reason}"
    if isinstance(job.error, ValueError):  # the pipeline refused an argument: the request's fault
        return 422, " ".join(str(job.error).split())
    return 500, f"generation failed: {type(job.error).__name__}: {' '.join(str(job.error).split())}"


def create_app(generator: Generator, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``generator``'s pipelines; the queue starts with the app and is
    closed (waiting and running jobs cancelled) when it shuts down."""
    settings = settings or ServeSettings()
    queue_holder: dict[str, JobQueue] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        queue = queue_holder.pop("queue", None)
        if queue is not None:
            await asyncio.to_thread(queue.close)

    app = FastAPI(
        title="latent-diffusion",
        version=latent_diffusion.__version__,
        description="Text-to-image, image-to-image, inpainting and upscaling with a latent diffusion model. "
                    "Requests wait in a bounded queue: 429 means it is full. Add `?stream=1` to a "
                    "generation request to get NDJSON events (`queued` with the position, `progress` with "
                    "step/total, then `result` or `error`) instead of one JSON answer.",
        lifespan=lifespan,
    )

    def get_queue() -> JobQueue:
        # Made on first use rather than at import, so an app that never serves starts no threads.
        if "queue" not in queue_holder:
            queue_holder["queue"] = JobQueue(settings.concurrency, settings.max_waiting, settings.max_run_seconds)
        return queue_holder["queue"]

    app.state.get_queue = get_queue
    app.state.generator = generator
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        message, errors = _field_errors(err)
        return _error(422, message, errors=errors)

    static = resources.files("latent_diffusion.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/api/info", summary="Model, tasks, samplers and limits")
    async def info() -> dict[str, Any]:
        return {**generator.info(settings.limits), "samplers": sorted(SAMPLERS), "max_waiting": settings.max_waiting,
                "concurrency": settings.concurrency, "version": latent_diffusion.__version__}

    @app.get("/api/health", summary="Liveness and the queue's counts")
    async def health() -> dict[str, Any]:
        # The per-request caps and the memory budget's largest side (computed once).
        return {"status": "ok", "queue": get_queue().stats(), "limits": asdict(settings.limits), **generator.memory}

    errors = {status: {"model": ErrorResponse, "description": text} for status, text in (
        (409, "the task is not enabled on this server"), (413, "request body or image too large"),
        (422, "invalid parameters or inputs"), (429, "the queue is full; retry later"),
        (500, "generation failed"), (503, "shutting down, or the job was stopped"))}
    stream_doc = {"description": "the result, or with ?stream=1 NDJSON events",
                  "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}

    async def generate(task: str, body: Any, request: Request, stream: bool) -> Any:
        try:
            # Decoding uploaded images is CPU work: off the event loop.
            prepared = await asyncio.to_thread(generator.prepare, task, body, settings.limits)
        except RequestError as err:
            return _error(err.status, str(err))
        try:
            job = get_queue().submit(prepared.run, kind=task, total=prepared.total_steps)
        except QueueFull as err:
            return _error(429, str(err))
        except QueueClosed as err:
            return _error(503, str(err))
        if stream:
            return StreamingResponse(_stream(job, request), media_type="application/x-ndjson",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async for _ in _follow(job, request):
                pass
        finally:
            if not job.finished:  # the handler itself was cancelled (client gone, server stopping)
                job.cancel("the client disconnected")
        if job.state == DONE:
            return job.result
        status, message = _failure(job)
        return _error(status, message)

    async def _stream(job: Job, request: Request) -> AsyncIterator[bytes]:
        reported_step = None
        try:
            async for snapshot in _follow(job, request):
                event = "queued" if snapshot["state"] == "waiting" else "progress"
                if snapshot["state"] == DONE:
                    # Snapshots coalesce steps that come faster than the client reads; the last
                    # step is always reported before the result, so a progress bar ends full.
                    if snapshot["step"] != reported_step:
                        yield (json.dumps({"event": "progress", **snapshot}) + "\n").encode()
                    payload = job.result.model_dump()
                    yield (json.dumps({"event": "result", **snapshot, "result": payload}) + "\n").encode()
                elif snapshot["state"] in (FAILED, CANCELLED):
                    status, message = _failure(job)
                    yield (json.dumps({"event": "error", **snapshot, "status": status, "detail": message})
                           + "\n").encode()
                else:
                    reported_step = snapshot["step"] if event == "progress" else reported_step
                    yield (json.dumps({"event": event, **snapshot}) + "\n").encode()
        finally:
            if not job.finished:
                job.cancel("the client disconnected")

    stream_query = Query(False, description="answer with NDJSON progress events instead of one JSON object")

    # One route per task so each has its own request model in the OpenAPI schema.
    @app.post("/api/txt2img", response_model=GenerationResponse, summary="Text to image",
              responses={**errors, 200: stream_doc})
    async def txt2img(body: Txt2ImgRequest, request: Request, stream: bool = stream_query) -> Any:
        return await generate("txt2img", body, request, stream)

    @app.post("/api/img2img", response_model=GenerationResponse, summary="Image to image",
              responses={**errors, 200: stream_doc})
    async def img2img(body: Img2ImgRequest, request: Request, stream: bool = stream_query) -> Any:
        return await generate("img2img", body, request, stream)

    @app.post("/api/inpaint", response_model=GenerationResponse, summary="Inpainting",
              responses={**errors, 200: stream_doc})
    async def inpaint(body: InpaintRequest, request: Request, stream: bool = stream_query) -> Any:
        return await generate("inpaint", body, request, stream)

    @app.post("/api/upscale", response_model=GenerationResponse, summary="Upscaling (needs --upscaler)",
              responses={**errors, 200: stream_doc})
    async def upscale(body: UpscaleRequest, request: Request, stream: bool = stream_query) -> Any:
        return await generate("upscale", body, request, stream)

    return app


__all__ = ["BodySizeLimit", "ServeSettings", "create_app"]
