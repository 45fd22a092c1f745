"""The FastAPI application: thin routes over the shared services."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from api import errors
from api.auth import BearerAuth
from api.batches import routes as batches
from api.batches.service import BatchService
from api.limits import BodyLimit
from api.metrics import Metrics
from api.observe import Observe, RequestCounter
from api.routes import admin, chat, embeddings, health, messages, models, rerank, responses, status
from api.services import Services
from common.settings import Settings

UPLOAD_PATHS = ("/v1/files",)  # multipart uploads: their own limit, LLM_BATCH_MAX_FILE_BYTES, as they stream


class App(FastAPI):
    """FastAPI with `Observe` around the whole stack: `add_middleware` would put it inside Starlette's
    ServerErrorMiddleware, whose 500s would then lack the request id header, the counts and the access line."""

    def build_middleware_stack(self) -> ASGIApp:
        return Observe(super().build_middleware_stack(), self.state.metrics, self.state.request_counter)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings)
        app.state.services = services
        await services.start()
        app.state.batches = BatchService(services)
        await app.state.batches.start()
        gc.freeze()  # what is alive now stays: out of the cyclic collector's full passes (see worker settle_heap)
        try:
            yield
        finally:
            await app.state.batches.close()
            await services.close()

    app = App(title="Local LLM Interface", version="0.1.0", lifespan=lifespan)
    app.state.metrics = Metrics()
    app.state.request_counter = RequestCounter()
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=UPLOAD_PATHS)
    app.add_middleware(BearerAuth, settings=settings)
    app.add_middleware(errors.CatchAll)  # outside the others: a fault anywhere is a 500, the connection kept
    for module in (chat, responses, messages, embeddings, models, health, status, rerank, batches, admin):
        app.include_router(module.router)
    return app
