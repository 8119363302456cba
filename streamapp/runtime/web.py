"""HTTP views (aiohttp routes on Faust's web server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime


def install(web_app: web.Application, runtime: Runtime) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({
            "ready": runtime.ready(),
            "live_partitions": sorted(runtime.engine.live_partitions()),
            "running": runtime.actors.running(),
            "pending": runtime.engine.pending_count(),
            "sleeping": runtime.scheduler.total(),
        })

    web_app.router.add_get("/health", health)


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)
