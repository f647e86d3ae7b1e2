from __future__ import annotations

from fastapi import APIRouter, FastAPI

from tests.realapp.routers import articles, users


def create_app() -> FastAPI:
    app = FastAPI()
    api = APIRouter(prefix="/api")
    v1 = APIRouter(prefix="/v1")
    v1.include_router(users.router)
    v1.include_router(articles.router)
    api.include_router(v1)
    app.include_router(api)
    return app
