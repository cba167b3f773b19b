"""The FastAPI application: A1111's `/sdapi/v1/...` routes and OpenAI's `/v1/images/generations`
over one `GenerationQueue`.

Requests are parsed by the pydantic models of `schema`, translated and checked against the model
(`mlx_sd.generation.plan`) before they are queued, so a bad request is a 4xx with the engine's own
reason and never occupies the queue. Errors: 400 for a request that cannot run, 401 without the
credentials of `--api-auth`, 413 for a body over the limit, 400 for a body that is not UTF-8 or nests
too deeply to parse, 422 for bad JSON or a wrong type, 503 with Retry-After when the queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convert.upscaler_reader import library_upscaler_reader
from mlx_sd import __version__
from mlx_sd.generation import plan
from mlx_sd.hires import LATENT_UPSCALE_MODES
from mlx_sd.infotext import parse_infotext
from mlx_sd.library import Library as ResourceLibrary
from mlx_sd.model_format import read_config
from mlx_sd.request import GenerationRequest
from mlx_sd.samplers import SAMPLERS
from mlx_sd.schedules import SCHEDULES
from mlx_sd.upscalers import CLASSIC_FILTERS

from .exposure import DEFAULT_PORT, LOCAL_HOSTS
from .images import decode_image, encode_png
from .history import HistoryRecorder
from .jobs import DEFAULT_MAX_QUEUED, GenerationQueue, JobOutcome, PipelineExecutor, QueueFullError
from .library import Library, ServedModel
from .schema import Img2ImgRequest, OpenAIImageRequest, PngInfoRequest, Txt2ImgRequest
from .translate import ServerOptions, a1111_info, a1111_request, openai_request

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # room for a few 2048x2048 PNGs in base64
RETRY_AFTER_SECONDS = 10
MAX_ECHO_DEPTH = 32  # a bad value nested deeper is named in a 422, not echoed back


@dataclass(frozen=True)
class ServerConfig:
    library: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_auth: tuple[str, str] | None = None  # HTTP Basic user and password
    cors_allow_origins: tuple[str, ...] = ()
    max_queued: int = DEFAULT_MAX_QUEUED
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    record_history: bool = True
    precision: str = "float32"  # of the CPU's products (Pipeline.precision)


def start_queue(config: ServerConfig, model: ServedModel) -> GenerationQueue:
    """The generation queue over the server's own executor, with `model` loaded when this returns."""
    recorder = HistoryRecorder(config.library) if config.record_history else None
    executor = PipelineExecutor(
        config.precision, library_upscaler_reader(config.library, files=False), ResourceLibrary(config.library, names_only=True)
    )
    queue = GenerationQueue(executor, config.max_queued, recorder)
    try:
        queue.submit(model, None).result()
    except BaseException:
        queue.close()
        raise
    return queue


class ApiServer:
    """The state behind the routes: the library, the A1111 options and the queue."""

    def __init__(self, config: ServerConfig, queue: GenerationQueue, model: ServedModel, library: Library | None = None):
        self.config = config
        self.queue = queue
        self.library = library or Library(config.library)
        self.options = ServerOptions(model.title, model.sha256 or None)

    # -- generation ---------------------------------------------------------------------------

    async def a1111(self, payload: Txt2ImgRequest) -> dict[str, Any]:
        model, request, not_applied = await run_in_threadpool(self._prepare_a1111, payload)
        outcome = await self._run(model, request)
        return await run_in_threadpool(self._a1111_response, payload, outcome, not_applied)

    def _prepare_a1111(self, payload: Txt2ImgRequest) -> tuple[ServedModel, GenerationRequest, tuple[str, ...]]:
        init = mask = None
        if isinstance(payload, Img2ImgRequest):
            if payload.init_images:
                init = decode_image(payload.init_images[0], "init_images[0]").image
            if payload.mask:
                mask = decode_image(payload.mask, "mask").image
        translated = a1111_request(payload, self.options, init, mask)
        model = self.library.model(translated.model)
        return model, self._checked(model, self.library.with_vae_file(translated.request)), translated.not_applied

    def _a1111_response(self, payload: Txt2ImgRequest, outcome: JobOutcome, not_applied: tuple[str, ...]) -> dict[str, Any]:
        info = a1111_info(
            outcome.request, outcome.seeds, outcome.infotexts, outcome.model.name, outcome.model.hash,
            not_applied, outcome.interrupted,
        )
        if outcome.history_error:
            info["history_error"] = outcome.history_error
        images = _encoded(outcome)
        parameters = payload.model_dump(exclude={"init_images", "mask"})
        return {"images": images if payload.send_images else [], "parameters": parameters, "info": json.dumps(info)}

    async def openai(self, payload: OpenAIImageRequest) -> dict[str, Any]:
        def prepare() -> tuple[ServedModel, GenerationRequest]:
            model = self.library.model(self.options.sd_model_checkpoint)
            request = openai_request(payload, read_config(model.folder).default_size)
            return model, self._checked(model, request)

        model, request = await run_in_threadpool(prepare)
        outcome = await self._run(model, request)

        def respond() -> dict[str, Any]:
            encoded = _encoded(outcome)
            key = "b64_json" if payload.response_format == "b64_json" else "url"
            prefix = "" if key == "b64_json" else "data:image/png;base64,"
            return {"created": int(time.time()), "data": [{key: prefix + data} for data in encoded]}

        return await run_in_threadpool(respond)

    def _checked(self, model: ServedModel, request: GenerationRequest) -> GenerationRequest:
        """The request with canonical sampler names, or RequestError: everything is checked before it queues."""
        return plan(read_config(model.folder), request, ResourceLibrary(self.config.library, names_only=True)).request

    async def _run(self, model: ServedModel, request: GenerationRequest | None) -> JobOutcome:
        return await asyncio.wrap_future(self.queue.submit(model, request))

    # -- options ------------------------------------------------------------------------------

    async def set_options(self, options: dict[str, Any]) -> None:
        """Apply the options this server knows; a checkpoint switch waits for the jobs queued before it."""
        clip_skip = options.get("CLIP_stop_at_last_layers")
        if clip_skip is not None and (not isinstance(clip_skip, int) or isinstance(clip_skip, bool) or not 1 <= clip_skip <= 12):
            raise ValueError(f"CLIP_stop_at_last_layers = {clip_skip!r} is not allowed: a whole number from 1 to 12")
        vae = options.get("sd_vae")
        if vae is not None and not isinstance(vae, str):
            raise ValueError(f"sd_vae = {vae!r} is not allowed: a VAE name")
        checkpoint = options.get("sd_model_checkpoint")
        if checkpoint is not None:
            model = await run_in_threadpool(self.library.model, str(checkpoint))
            await self._run(model, None)  # loaded after the jobs queued before it
            self.options = dataclasses.replace(self.options, sd_model_checkpoint=model.title, sd_checkpoint_hash=model.sha256 or None)
        if clip_skip is not None:
            self.options.CLIP_stop_at_last_layers = clip_skip
        if vae is not None:
            self.options.sd_vae = vae

    # -- progress -----------------------------------------------------------------------------

    def progress(self, skip_current_image: bool) -> dict[str, Any]:
        snapshot = self.queue.progress()
        preview = None
        if snapshot.preview is not None and not skip_current_image:
            preview = encode_png(snapshot.preview)
        return {
            "progress": snapshot.progress,
            "eta_relative": snapshot.eta_relative,
            "state": {
                "skipped": snapshot.skipped,
                "interrupted": snapshot.interrupted,
                "stopping_generation": False,
                "job": "",
                "job_count": snapshot.job_count,
                "job_timestamp": snapshot.job_timestamp,
                "job_no": snapshot.batch_index,
                "sampling_step": snapshot.sampling_step,
                "sampling_steps": snapshot.sampling_steps,
            },
            "current_image": preview,
            "textinfo": None,
        }


def _encoded(outcome: JobOutcome) -> list[str]:
    """The outcome's images as base64 PNGs, each carrying its infotext."""
    return [encode_png(image, text) for image, text in zip(outcome.images, outcome.infotexts, strict=True)]


def create_app(server: ApiServer) -> FastAPI:
    config = server.config
    app = FastAPI(title="mlx-sd", version=__version__, dependencies=[Depends(_basic_auth(config.api_auth))])
    _add_error_handlers(app)
    _add_routes(app, server)
    if config.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_allow_origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app


def _add_routes(app: FastAPI, server: ApiServer) -> None:
    api = "/sdapi/v1"

    @app.post(f"{api}/txt2img")
    async def txt2img(payload: Txt2ImgRequest) -> dict[str, Any]:
        return await server.a1111(payload)

    @app.post(f"{api}/img2img")
    async def img2img(payload: Img2ImgRequest) -> dict[str, Any]:
        return await server.a1111(payload)

    @app.post("/v1/images/generations")
    async def images_generations(payload: OpenAIImageRequest) -> dict[str, Any]:
        return await server.openai(payload)

    @app.get(f"{api}/options")
    def get_options() -> dict[str, Any]:
        return server.options.as_dict()

    @app.post(f"{api}/options")
    async def set_options(options: dict[str, Any] = Body(...)) -> None:
        await server.set_options(options)

    @app.get(f"{api}/progress")
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        return server.progress(skip_current_image)

    @app.post(f"{api}/interrupt")
    def interrupt() -> dict[str, Any]:
        server.queue.interrupt()
        return {}

    @app.post(f"{api}/skip")
    def skip() -> None:  # A1111 answers null here, {} for interrupt
        server.queue.skip()

    @app.post(f"{api}/png-info")
    def png_info(payload: PngInfoRequest) -> dict[str, Any]:
        decoded = decode_image(payload.image, "image")
        parameters: dict[str, Any] = {}
        if decoded.infotext:
            parsed = parse_infotext(decoded.infotext)
            parameters = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt, **parsed.params}
        return {"info": decoded.infotext or "", "items": decoded.items, "parameters": parameters}

    @app.get(f"{api}/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [model.sd_model() for model in server.library.models()]

    @app.get(f"{api}/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    @app.get(f"{api}/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [
            {"name": s.name.lower().replace(" ", "_"), "label": s.name, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for s in SCHEDULES
        ]

    @app.get(f"{api}/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        found = [{"name": p.stem, "model_name": p.stem, "model_path": str(p), "model_url": None, "scale": None} for p in server.library.files("upscalers")]
        filters = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for name in CLASSIC_FILTERS]
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": None}, *filters, *found]

    @app.get(f"{api}/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @app.get(f"{api}/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        return [{"model_name": p.stem, "filename": str(p)} for p in server.library.files("vae")]

    @app.get(f"{api}/loras")
    def loras() -> list[dict[str, Any]]:
        return [{"name": p.stem, "alias": p.stem, "path": str(p), "metadata": {}} for p in server.library.files("loras")]

    @app.get(f"{api}/embeddings")
    def embeddings() -> dict[str, Any]:
        # listed as skipped: the engine does not load embeddings yet
        return {"loaded": {}, "skipped": {p.stem: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": 0} for p in server.library.files("embeddings")}}

    @app.get(f"{api}/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        config = server.config
        return {
            "api": True, "nowebui": True, "listen": config.host not in LOCAL_HOSTS, "port": config.port,
            "api_auth": "set" if config.api_auth else None, "cors_allow_origins": ",".join(config.cors_allow_origins) or None,
            "data_dir": str(config.library),
        }

    @app.get(f"{api}/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @app.post(f"{api}/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        """Nothing to do: the library is read afresh on every request."""

    @app.post(f"{api}/refresh-loras")
    def refresh_loras() -> None:
        """Nothing to do: the library is read afresh on every request."""


def _basic_auth(credentials: tuple[str, str] | None):  # -> a FastAPI dependency
    async def check(request: Request) -> None:
        if credentials is None:
            return
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        good = secrets.compare_digest(user.encode(), credentials[0].encode())
        good &= secrets.compare_digest(password.encode(), credentials[1].encode())
        if scheme.lower() != "basic" or not good:
            raise _Unauthorized()

    return check


class _Unauthorized(Exception):
    pass


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": "Unauthorized", "detail": "this server needs the user and password given to --api-auth"},
            status_code=401, headers={"WWW-Authenticate": 'Basic realm="mlx-sd"'},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI turns a body it cannot decode into "There was an error parsing the body": say why
        reason = _unreadable_body(exc.__cause__)
        if reason is None:
            return await http_exception_handler(request, exc)
        return JSONResponse({"error": "BadRequestBody", "detail": reason}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input back, and a number beyond float range (1e400
        # parses as inf) cannot be written as JSON: it would fail with an unrelated message.
        # Deeply nested input (which json.loads still reads) is not echoed: encoding it back would recurse.
        errors = [{**e, "input": _echoable(e["input"])} if "input" in e else e for e in exc.errors()]
        return JSONResponse({"detail": _finite(jsonable_encoder(errors))}, status_code=422)

    @app.exception_handler(ValueError)  # RequestError, ImageInputError, UnknownModelError...
    async def bad_request(request: Request, exc: ValueError) -> JSONResponse:
        return error(400, exc)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error(503, exc, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return error(500, exc)


def _unreadable_body(cause: BaseException | None) -> str | None:
    """Why a request body could not be read as JSON, in one line, or None for other failures."""
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"the request body is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}): "
            "send the JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return "the request body's JSON nests arrays or objects too deeply to read: send a flat A1111 request object"
    return None


def _echoable(value: Any) -> Any:
    """`value`, or a note in its place when its arrays and objects nest deeper than MAX_ECHO_DEPTH."""
    stack = [(value, 0)]
    while stack:  # iterative: the nesting is the client's to choose
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= MAX_ECHO_DEPTH:
                return f"(arrays or objects nested more than {MAX_ECHO_DEPTH} deep)"
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def _finite(value: Any) -> Any:
    """`value` with each infinite or NaN float written as text, which JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413 before the application reads any of it
    (a declared Content-Length at once, a chunked body as soon as it grows past the limit)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"error": "RequestTooLarge", "detail": f"the request body is larger than {self.limit} bytes"}, status_code=413
        )
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
