"""HTTP routes for the frontend extension: chunk counts and the prompt-schedule timeline, computed by the same
code the sampler runs (so the UI shows exactly the errors a run would raise)."""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from .conditioning import chunk_info, schedule_info


DIT_WIDGETS = ("model", "variant", "weight_dtype", "attention", "precision", "device", "special_tokens", "compile",
               "block_swap")


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

    @routes.post("/magi/dit_info")
    async def post_dit_info(request):
        """What the DiT loader's widgets name, from the checkpoint's headers: shown before (and without) a run."""
        from .loader_nodes import MagiDiTLoader

        try:
            data = await request.json()
            handle = MagiDiTLoader.handle(**{k: data[k] for k in DIT_WIDGETS if k in data})
            d = handle.detection
            return web.json_response(dict(text=handle.describe(), size=d.size, variant=d.variant,
                                          guidance=not (d.cfg.distill or d.cfg.fp8_quant)))
        except (ValueError, OSError) as e:  # the widgets' values: the panel shows it (no failed request in the console)
            return web.json_response({"error": str(e)})
        except TypeError as e:  # a malformed request
            return web.json_response({"error": str(e)}, status=400)

    @routes.post("/magi/schedule")
    async def post_schedule(request):
        try:
            data = await request.json()
            frames, fps, prefix = _ints(data, ("frames", 96), ("fps", 24), ("prefix_frames", 0))
            return web.json_response(schedule_info(str(data.get("text", "")), frames, fps, prefix))
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)


WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def template_rank(name: str) -> tuple:
    """Sort key of a shipped workflow in the template browser: its extra.magi_order (text to video first)."""
    try:
        return (json.loads((WORKFLOWS / f"{name}.json").read_text())["extra"]["magi_order"], name)
    except (OSError, ValueError, KeyError, TypeError):
        return (1 << 30, name)


@web.middleware
async def order_templates(request, handler):
    """ComfyUI lists a pack's workflows in file-system order; list ours in the order the pack means them."""
    response = await handler(request)
    if request.path not in ("/workflow_templates", "/api/workflow_templates") or response.status != 200:
        return response
    listed = json.loads(response.body)
    ours = {p.stem for p in WORKFLOWS.glob("*.json")}
    for pack, names in listed.items():
        if ours & set(names):
            listed[pack] = sorted(names, key=template_rank)
    return web.json_response(listed)


def register() -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is not None and not getattr(PromptServer.instance, "_magi_routes", False):
        add_routes(PromptServer.instance.routes)
        try:
            PromptServer.instance.app.middlewares.append(order_templates)
        except RuntimeError:  # the app already started (frozen): the list keeps ComfyUI's order
            pass
        PromptServer.instance._magi_routes = True
