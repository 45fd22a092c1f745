"""The FastAPI application: thin routes over the shared services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import embeddings, health, models
from api.services import Services
from common.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings)
        app.state.services = services
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="Local LLM Interface", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    for module in (embeddings, models, health):
        app.include_router(module.router)
    return app
