"""HTTP routes for the frontend extension: chunk counts and the prompt-schedule timeline, computed by the same
code the sampler runs (so the UI shows exactly the errors a run would raise)."""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from magi_core.settings import steps_problem

from .conditioning import chunk_info, schedule_info


DIT_WIDGETS = ("model", "variant", "weight_dtype", "attention", "precision", "device", "special_tokens", "compile",
               "block_swap")


def _ints(data, *names):
    try:
        return [int(data.get(n, d)) for n, d in names]
    except (TypeError, ValueError):
        raise ValueError(f"{', '.join(n for n, _ in names)} must be integers") from None


def add_routes(routes) -> None:
    @routes.get("/magi/chunk_info")
    async def get_chunk_info(request):
        """The sampler panel: chunk counts and output length, or why the widgets' values can't run."""
        try:
            frames, fps, prefix, steps, window = _ints(request.rel_url.query, ("frames", 96), ("fps", 24),
                                                       ("prefix_frames", 0), ("steps", 0), ("window_size", 0))
        except ValueError as e:  # a malformed request
            return web.json_response({"error": str(e)}, status=400)
        try:  # the widgets' values: the panel shows the error (no failed request in the browser's console)
            problem = steps_problem(steps, window) if steps and window else None
            return web.json_response({"error": problem} if problem else chunk_info(frames, fps, prefix))
        except ValueError as e:
            return web.json_response({"error": str(e)})

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
            text = str(data.get("text", ""))
        except ValueError as e:  # a malformed request
            return web.json_response({"error": str(e)}, status=400)
        try:
            return web.json_response(schedule_info(text, frames, fps, prefix))
        except ValueError as e:  # e.g. frames 0 on the sampler: the panel shows it
            return web.json_response({"error": str(e)})


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
