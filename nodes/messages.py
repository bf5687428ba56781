"""What the nodes tell the user outside their outputs: text shown on the node, warnings in the console."""
from __future__ import annotations

import logging


def server():
    """ComfyUI's PromptServer, or None (ComfyUI imported as a library)."""
    try:
        from server import PromptServer

        return PromptServer.instance
    except Exception:
        return None


def node_id(cls):
    """The running node's id (ComfyUI's hidden unique_id), or None when execute is called outside a prompt."""
    return getattr(getattr(cls, "hidden", None), "unique_id", None)


def show_text(node_id, text: str) -> None:
    """Text under the node in the UI (ComfyUI's progress text; '' clears it)."""
    s = server()
    if s is not None and node_id is not None:
        s.send_progress_text(text, str(node_id), s.client_id)


def warn(node_name: str, node_id, warnings: list[str]) -> dict | None:
    """Warnings to the console and on the node; -> the node's `ui` ({"text": warnings}) or None."""
    for w in warnings:
        logging.warning(f"{node_name} (node {node_id}): {w}")
    show_text(node_id, "\n".join(f"warning: {w}" for w in warnings))
    return {"text": list(warnings)} if warnings else None
