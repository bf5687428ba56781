"""Finished chunks in the UI while a node works through a video: the progress bar (with a still), a text line,
and an animated preview per chunk for the frontend's chunk strip (websocket event "magi.chunk", js/magi.js).
Used by the sampler (chunk previews) and by MAGI Decode to Video File."""
from __future__ import annotations

import comfy.utils
import folder_paths
from comfy_execution.utils import get_executing_context

from . import messages, previews

CHUNK_EVENT = "magi.chunk"


class ChunkProgress:
    def __init__(self, node_id: str, fps: int, still: bool = True):
        """still: each chunk's still also goes with the progress bar (the sampler's large preview). An output node
        passes False: the frontend keeps showing such a live preview instead of the node's finished output."""
        self.node_id, self.fps, self.still = node_id, fps, still
        self.pbar = comfy.utils.ProgressBar(1)
        self.step = (0, 1)
        self.images = []  # the chunk previews written so far (ComfyUI's {filename, subfolder, type})
        self.server = messages.server()
        ctx = get_executing_context()
        self.prompt_id = ctx.prompt_id if ctx is not None else None

    def progress(self, i: int, total: int) -> None:
        self.step = (i, total)
        self.pbar.update_absolute(i, total)

    def text(self, text: str) -> None:
        messages.show_text(self.node_id, text)

    def chunk(self, index: int, total: int, frames, text: str) -> None:
        """A finished chunk: its frames (T, H, W, 3) in the node's strip and on the progress bar, and `text`."""
        image = previews.save_animation(frames, folder_paths.get_temp_directory(),
                                        f"magi_{self.node_id}_chunk{index:03d}", self.fps)
        self.images.append(image)
        if self.still:
            self.pbar.update_absolute(*self.step, preview=("JPEG", previews.still(frames), previews.MAX_SIZE))
        if self.server is not None:
            self.server.send_sync(CHUNK_EVENT, dict(node=self.node_id, prompt_id=self.prompt_id, index=index,
                                                    total=total, image=image), self.server.client_id)
        self.text(text)
