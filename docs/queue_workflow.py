"""Queue a shipped MAGI-1 API workflow on a running ComfyUI from a script, and save what it makes.

    python docs/queue_workflow.py --workflow magi1_t2v --prompt "a red fox in fresh snow" --seed 7 \
        --width 480 --height 480 --frames 48 --out renders/

Steps (README, "Headless use"): load workflows/api/<name>.json (ComfyUI's API format: node id -> class_type and
inputs), set the prompt / seed / size / frames, POST it to /prompt, follow the run on the websocket (progress,
finished chunks, errors), then read /history/<prompt_id> and download the saved files through /view.
`--set Class.input=value` changes any other widget (value as JSON, else text), e.g. `--set MagiSampler.steps=32`.
Runs with the Python that runs ComfyUI (it needs only aiohttp, one of ComfyUI's requirements).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import uuid
from pathlib import Path

import aiohttp

API_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
TEXT_INPUTS = {"MagiPromptSchedule": "schedule", "MagiTextEncode": "prompt", "MagiCLIPTextEncode": "prompt"}


class RunError(Exception):
    """The server refused the workflow or the run failed (the message says why)."""


def load_workflow(name: str) -> dict:
    """A shipped API workflow by name (magi1_t2v, ...) or any API-format .json file."""
    path = Path(name) if name.endswith(".json") else API_WORKFLOWS / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
        raise RunError(f"no workflow {name!r}: use one of {shipped} or a path to an API-format .json file "
                       "(ComfyUI: Workflow > Export (API))")
    return json.loads(path.read_text())


def set_inputs(prompt: dict, text=None, seed=None, width=None, height=None, frames=None, overrides=()) -> dict:
    """Change widget values in place: the prompt goes to the node that holds the text (the schedule node when
    there is one), seed/frames to the sampler, width/height to the sampler and to MAGI VAE Encode."""
    changes = [(c, k, v) for c, k, v in (("MagiSampler", "seed", seed), ("MagiSampler", "num_frames", frames),
                                           ("MagiSampler", "width", width), ("MagiSampler", "height", height),
                                           ("MagiVAEEncode", "width", width), ("MagiVAEEncode", "height", height))
               if v is not None]
    if text is not None:
        holders = [(n["class_type"], TEXT_INPUTS[n["class_type"]]) for n in prompt.values()
                   if isinstance(n["inputs"].get(TEXT_INPUTS.get(n["class_type"])), str)]
        if not holders:
            raise RunError("this workflow has no MAGI prompt text to set")
        changes.append((*holders[0], text))
    for item in overrides:
        key, sep, value = item.partition("=")
        cls, dot, name = key.partition(".")
        if not (sep and dot):
            raise RunError(f"--set {item!r}: write Class.input=value, e.g. MagiSampler.steps=32")
        try:
            value = json.loads(value)
        except ValueError:
            pass  # plain text
        changes.append((cls, name, value))
    for cls, name, value in changes:
        nodes = [n for n in prompt.values() if n["class_type"] == cls]
        if not nodes and cls != "MagiVAEEncode":  # width/height go to VAE Encode only where there is one
            raise RunError(f"the workflow has no {cls} node (its nodes: {sorted({n['class_type'] for n in prompt.values()})})")
        for n in nodes:
            if name not in n["inputs"]:  # ComfyUI would ignore it without a word
                raise RunError(f"{cls} has no input {name!r} in this workflow (it has {sorted(n['inputs'])})")
            n["inputs"][name] = value
    return prompt


async def run(server: str, prompt: dict, out_dir: Path, log=print) -> list[Path]:
    """Queue `prompt`, report progress, wait for the end, download the output files. -> the files written."""
    client_id = uuid.uuid4().hex
    ws_url = server.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        async with http.post(f"{server}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            body = await r.json()
        if r.status != 200:
            raise RunError(_refusal(body))
        prompt_id = body["prompt_id"]
        log(f"queued {prompt_id}")
        said = {}  # node id -> the last text shown under it (the sampler says there where it kept a stopped run)
        counted = {}  # node id -> the last progress count logged
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:  # preview images, and text under nodes
                text = node_text(msg.data)
                if text:
                    said[text[0]] = text[1]
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            kind, d = m["type"], m.get("data") or {}
            if d.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "executing" and d.get("node"):
                log(f"running {prompt[d['node']]['class_type']} (node {d['node']})")
            elif kind == "progress":  # the sampler counts DiT calls (ComfyUI may send a count twice: said once)
                if counted.get(d.get("node")) != (d["value"], d["max"]):
                    counted[d.get("node")] = (d["value"], d["max"])
                    log(f"  progress {d['value']}/{d['max']} (node {d.get('node')})")
            elif kind == "magi.chunk":
                log(f"  chunk {d['index'] + 1}/{d['total']} done")
            elif kind == "execution_error":
                raise RunError(f"{d.get('node_type')} (node {d.get('node_id')}) failed: {d.get('exception_message')}"
                               + kept(said))
            elif kind == "execution_interrupted":
                raise RunError("the run was interrupted" + kept(said))
            elif kind == "execution_success":
                break
        for _ in range(100):  # the history entry is written just after execution_success is sent
            async with http.get(f"{server}/history/{prompt_id}") as r:
                entry = (await r.json()).get(prompt_id)
            if entry is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise RunError(f"the run finished, but /history/{prompt_id} did not list it within 10 s")
        outputs = entry["outputs"]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for node_out in outputs.values():
            for items in node_out.values():
                for f in items if isinstance(items, list) else []:
                    if isinstance(f, dict) and f.get("type") == "output" and "filename" in f:
                        written.append(await _download(http, server, f, out_dir))
        return written


def node_text(data: bytes) -> tuple[str, str] | None:
    """(node id, text) of ComfyUI's binary "text under a node" message (server.py send_progress_text: event 3, then
    the node id's length, the node id and the text), None for any other binary message."""
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != 3:
        return None
    n = struct.unpack(">I", data[4:8])[0]
    return data[8:8 + n].decode(errors="replace"), data[8 + n:].decode(errors="replace")


def kept(said: dict) -> str:
    """What a stopped sampler said about the finished chunks it saved (in the server's output folder), if it did."""
    notes = [t for t in said.values() if t.startswith("stopped after")]
    return f"; the sampler {notes[-1]} (on the server)" if notes else ""


async def _download(http, server: str, f: dict, out_dir: Path) -> Path:
    params = {"filename": f["filename"], "subfolder": f.get("subfolder", ""), "type": f["type"]}
    dest = out_dir / f["filename"]
    part = dest.with_name(dest.name + ".part")
    async with http.get(f"{server}/view", params=params) as r:
        r.raise_for_status()
        with open(part, "wb") as fh:
            async for block in r.content.iter_chunked(1 << 20):
                fh.write(block)
    os.replace(part, dest)  # a complete file or none
    return dest


def _refusal(body) -> str:
    """ComfyUI's /prompt 400 answer as lines: the error, then each node's problems."""
    lines = [f"the server refused the workflow: {(body.get('error') or {}).get('message', body)}"]
    for node_id, e in (body.get("node_errors") or {}).items():
        for err in e.get("errors", []):
            text = ": ".join(t for t in (err.get("message"), err.get("details")) if t)
            lines.append(f"  {e.get('class_type')} (node {node_id}): {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address (default: %(default)s)")
    ap.add_argument("--workflow", default="magi1_t2v",
                    help="shipped API workflow name or an API .json file (default: %(default)s)")
    ap.add_argument("--prompt", help="prompt text or a per-chunk schedule ('0-1: ...' lines; default: the workflow's)")
    ap.add_argument("--seed", type=int, help="the sampler's seed (default: the workflow's)")
    ap.add_argument("--width", type=int,
                    help="the sampler's and MAGI VAE Encode's width, a multiple of 16 (default: the workflow's)")
    ap.add_argument("--height", type=int,
                    help="the sampler's and MAGI VAE Encode's height, a multiple of 16 (default: the workflow's)")
    ap.add_argument("--frames", type=int, help="the sampler's num_frames (default: the workflow's)")
    ap.add_argument("--set", action="append", default=[], metavar="Class.input=value", help="any other widget")
    ap.add_argument("--out", default=".", help="folder for the downloaded files (default: the current folder)")
    a = ap.parse_args(argv)
    try:
        prompt = set_inputs(load_workflow(a.workflow), a.prompt, a.seed, a.width, a.height, a.frames, a.set)
        files = asyncio.run(run(a.server.rstrip("/"), prompt, Path(a.out)))
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except aiohttp.ClientError as e:
        print(f"error: cannot talk to ComfyUI at {a.server} ({e}); is it running?", file=sys.stderr)
        return 1
    for f in files:
        print(f"saved {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
