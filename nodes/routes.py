"""HTTP routes for the frontend extension: chunk counts and the prompt-schedule timeline, computed by the same
code the sampler runs (so the UI shows exactly the errors a run would raise)."""
from __future__ import annotations

from aiohttp import web

from .conditioning import chunk_info, schedule_info


def _ints(data, *names):
    try:
        return [int(data.get(n, d)) for n, d in names]
    except (TypeError, ValueError):
        raise ValueError("frames, fps and prefix_frames must be integers") from None


def add_routes(routes) -> None:
    @routes.get("/magi/chunk_info")
    async def get_chunk_info(request):
        try:
            frames, fps, prefix = _ints(request.rel_url.query, ("frames", 96), ("fps", 24), ("prefix_frames", 0))
            return web.json_response(chunk_info(frames, fps, prefix))
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)

    @routes.post("/magi/schedule")
    async def post_schedule(request):
        try:
            data = await request.json()
            frames, fps, prefix = _ints(data, ("frames", 96), ("fps", 24), ("prefix_frames", 0))
            return web.json_response(schedule_info(str(data.get("text", "")), frames, fps, prefix))
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)


def register() -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is not None and not getattr(PromptServer.instance, "_magi_routes", False):
        add_routes(PromptServer.instance.routes)
        PromptServer.instance._magi_routes = True
