"""``/docs`` (Swagger UI) and ``/redoc``, served from this machine: no CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a server without a route to
the internet they are blank. These pages are FastAPI's documented ``get_swagger_ui_html`` and
``get_redoc_html`` with local URLs, and the files come from the ``fastapi-offline`` package
(Swagger UI's and ReDoc's own builds, pinned by the lock file; their licences are MIT for
fastapi-offline and ReDoc, Apache-2.0 for Swagger UI), served by Starlette's ``StaticFiles``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import TemplatedRoute, note_route

__all__ = ["STATIC_URL", "docs_routes"]

STATIC_URL = "/static-docs"


def _static_directory() -> Path:
    """Where the ``fastapi-offline`` wheel keeps Swagger UI's and ReDoc's files."""
    return Path(str(files("fastapi_offline") / "static"))


def docs_routes(title: str, openapi_url: str, oauth2_redirect_url: str) -> list[BaseRoute]:
    """The routes of the OpenAPI schema, ``/docs``, ``/redoc`` and their static files: the
    schema too, so that every route notes its template for the HTTP metrics
    (``TemplatedRoute``; FastAPI's own schema route is a plain Starlette one)."""
    router = APIRouter(include_in_schema=False, route_class=TemplatedRoute)

    @router.get(openapi_url)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        )

    @router.get(oauth2_redirect_url)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )

    files = _Noted(StaticFiles(directory=_static_directory()), f"{STATIC_URL}/{{path}}")
    static = Mount(STATIC_URL, files, name="static-docs")
    return [*router.routes, static]


class _Noted:
    """An ASGI app that notes ``template`` as its route for the HTTP metrics, then serves."""

    def __init__(self, app: ASGIApp, template: str) -> None:
        self.app = app
        self.template = template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        note_route(scope, self.template)
        await self.app(scope, receive, send)
