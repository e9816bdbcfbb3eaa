"""The Label Studio ML backend over HTTP: each route validates its body, calls one `Backend`
method, and returns JSON. All logic lives in `annotator.backend` and `annotator.trainer`."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from annotator.config import Settings
from annotator.errors import AnnotatorError
from annotator.backends.errors import status_for
from annotator.backends.limits import BodyLimitMiddleware, check_depth
from annotator.backends.schemas import PredictRequest, SearchRequest, SetupRequest

log = logging.getLogger("annotator.backend")
OPEN_PATHS = {"/webhook"}  # Label Studio's event webhook sends no basic auth: its secret header is checked instead
SECRET_HEADER = "x-annotator-secret"
MAX_BODY_BYTES = 64 * 1024 * 1024


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for key in ("path", "status", "ms"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger("annotator")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def create_app(settings: Settings | None = None, *, store=None, runtime=None, start_trainer: bool = True,
               **trainer_options) -> FastAPI:
    """The app. Its startup builds, once per process, the store (unless given), the `Runtime`
    (encoders, models, indexes; unless given), the `Backend` and the `Trainer` (started unless
    ``start_trainer`` is False; ``trainer_options`` are its debounce policy)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from annotator.backend import Backend
        from annotator.config import load_settings
        from annotator.runtime import Runtime
        from annotator.store import open_store
        from annotator.trainer import Trainer

        conf = settings or load_settings()
        own_store = store is None
        st = store or open_store(conf)
        rt = runtime or Runtime(conf)
        app.state.backend = Backend(conf, store=st, runtime=rt)
        app.state.trainer = Trainer(conf, store=st, runtime=rt, **trainer_options)
        if start_trainer:
            app.state.trainer.start()
        try:
            yield
        finally:
            app.state.trainer.close()
            app.state.backend.close()
            if own_store:
                st.close()

    app = FastAPI(title="annotator ML backend", lifespan=lifespan)
    auth = _basic_auth(settings) if settings is not None else None

    def basic_auth_ok(request: Request) -> bool:
        # compared as bytes: a header with non-ASCII bytes is a wrong password, not a TypeError
        return bool(auth) and hmac.compare_digest(request.headers.get("authorization", "").encode("latin-1"),
                                                  auth.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        if auth and request.url.path not in OPEN_PATHS and not basic_auth_ok(request):
            return JSONResponse({"detail": "Unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="annotator"'})
        response = await call_next(request)
        response.headers["X-Annotator-Worker"] = str(os.getpid())  # which process answered (serve --workers N)
        log.info("request", extra={"path": request.url.path, "status": response.status_code,
                                   "ms": round(1000 * (time.perf_counter() - started), 1)})
        return response

    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)  # added last: runs first

    @app.exception_handler(AnnotatorError)
    async def library_error(_request: Request, exc: AnnotatorError):
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    def b(request: Request):
        return request.app.state.backend

    @app.get("/")
    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        report = {**await run_in_threadpool(b(request).health), "trainer_alive": request.app.state.trainer.alive}
        return JSONResponse(report, status_code=200 if report["status"] == "UP" else 503)

    @app.post("/setup")
    async def setup(body: SetupRequest, request: Request) -> dict[str, Any]:
        check_depth(body.extra_params or {}, what="/setup extra_params")
        return await run_in_threadpool(b(request).setup, project=body.project, schema=body.schema_,
                                       hostname=body.hostname, access_token=body.access_token,
                                       extra_params=body.extra_params)

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        check_depth(body.tasks, what="/predict tasks")
        return await run_in_threadpool(b(request).predict, tasks=body.tasks, project=body.project,
                                       label_config=body.label_config, params=body.params)

    async def json_object(request: Request) -> dict[str, Any]:
        try:
            payload = await request.json()
        except ValueError:
            raise AnnotatorError(f"{request.url.path} body is not JSON") from None
        except RecursionError:  # json's decoder gives up near Python's recursion limit
            raise AnnotatorError(f"{request.url.path} body is nested too deeply") from None
        if not isinstance(payload, dict):
            raise AnnotatorError(f"{request.url.path} body must be a JSON object")
        check_depth(payload, what=f"{request.url.path} body")
        return payload

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        result = await run_in_threadpool(b(request).webhook, await json_object(request),
                                         secret=request.headers.get(SECRET_HEADER), authenticated=basic_auth_ok(request))
        return JSONResponse(result, status_code=202 if result["status"] == "queued" else 200)

    @app.post("/train")
    async def train(request: Request) -> JSONResponse:
        """Old Label Studio versions call /train; treat it as START_TRAINING."""
        project = (await json_object(request)).get("project")
        pid = project.get("id") if isinstance(project, dict) else project
        result = await run_in_threadpool(b(request).webhook, {"action": "START_TRAINING", "project": {"id": pid}},
                                         authenticated=basic_auth_ok(request))
        return JSONResponse(result, status_code=201)

    @app.get("/versions")
    async def versions(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(b(request).versions)

    @app.get("/metrics")
    async def metrics(request: Request) -> dict[str, Any]:
        return {"trainings": request.app.state.trainer.trainings}

    @app.post("/search")
    async def search(body: SearchRequest, request: Request) -> list[dict[str, Any]] | dict[str, Any]:
        query = body.model_dump(exclude={"project", "k", "to_labelstudio"}, exclude_none=True)
        return await run_in_threadpool(b(request).search, project=body.project, k=body.k,
                                       to_labelstudio=body.to_labelstudio, **query)

    return app


def _basic_auth(settings: Settings) -> str | None:
    if not settings.basic_auth_user or not settings.basic_auth_pass:
        return None
    token = f"{settings.basic_auth_user}:{settings.basic_auth_pass.get_secret_value()}".encode()
    return "Basic " + base64.b64encode(token).decode()


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory annotator.backends.app:app_from_env` (each worker builds its own)."""
    from annotator.config import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
