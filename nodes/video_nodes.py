"""MAGI-1 Decode to Video File: the sampler's latent -> a video file on disk, one chunk at a time.

Memory holds one chunk's frames however long the video is (an IMAGE batch of 10,000 frames at 720x720 is 62 GB
of float32). The file is written with magi_core.video.VideoWriter: a temporary file renamed into place when done;
on interrupt (or an error) the chunks finished so far are kept as a playable file. The output is ComfyUI's VIDEO
(a file-backed video), so the native Save Video / Get Video Components nodes take it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import InputImpl, io, ui

from magi_core.video import VideoWriter

from . import memory, messages
from .chunk_progress import ChunkProgress
from .latents import decode_chunks, missing_keys_note
from .types import CATEGORY, MagiVAE
from .vae_nodes import decode_tile_inputs, decode_tiling_problems


def prefix_problem(prefix: str, out_dir: str) -> bool | str:
    """True, or why `prefix` cannot name a file in `out_dir`: empty, or a folder outside it (the test
    folder_paths.get_save_image_path applies, where it raises after logging an error about saving an "image")."""
    name = os.path.basename(os.path.normpath(prefix.strip() or "."))
    if name in (".", "..", ""):
        return f"filename_prefix {prefix!r} names no file: give one, like video/MAGI-1"
    out_dir = os.path.abspath(out_dir)
    folder = os.path.abspath(os.path.join(out_dir, os.path.dirname(os.path.normpath(prefix))))
    if os.path.commonpath((out_dir, folder)) != out_dir:
        return (f"filename_prefix {prefix!r} points outside ComfyUI's output folder ({out_dir}): give a name "
                "inside it, like video/MAGI-1")
    return True


class MagiDecodeToVideoFile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiDecodeToVideoFile", display_name="MAGI-1 Decode to Video File", category=CATEGORY,
            description="Decode the sampler's latent chunk by chunk straight into an H.264 video in the output "
                        "folder: memory stays flat however long the video is (use it instead of MAGI VAE Decode + "
                        "Create Video for long videos). Each finished chunk shows on the node; if the run is "
                        "interrupted, the chunks written so far are kept as a playable file. The VIDEO output "
                        "works with ComfyUI's video nodes (Save Video copies the file without re-encoding).",
            inputs=[
                MagiVAE.Input("vae"),
                io.Latent.Input("samples", tooltip="the MAGI-1 Sampler's LATENT output"),
                io.String.Input("filename_prefix", default="video/MAGI-1",
                                tooltip="file name in the output folder; _00001_.mp4 etc. is appended"),
                io.Int.Input("crf", default=23, min=0, max=51,
                             tooltip="H.264 quality: lower is better and bigger (23 = the reference, 17 is "
                                     "visually lossless)"),
                *decode_tile_inputs(),
            ],
            outputs=[io.Video.Output(display_name="video")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None, tile_frames=None, temporal_overlap=None):
        """At queue time, not after the whole generation: a prefix the save would refuse (ComfyUI's
        folder_paths.get_save_image_path keeps files inside the output folder), the temporal tiling. (ComfyUI shows
        the answer under each of the three inputs; each problem names its own.)"""
        problems = [p for p in (True if filename_prefix is None else
                                prefix_problem(filename_prefix, folder_paths.get_output_directory()),
                                decode_tiling_problems(tile_frames, temporal_overlap)) if p is not True]
        return "; ".join(problems) if problems else True

    @classmethod
    def execute(cls, vae, samples, filename_prefix, crf, tile_size, tile_overlap, tile_frames, temporal_overlap):
        tiling = dict(tile_size=tile_size, tile_overlap=tile_overlap, tile_frames=tile_frames,
                      temporal_overlap=temporal_overlap)
        chunks = decode_chunks(vae.model, samples, tiling, who="MAGI Decode to Video File")
        note = missing_keys_note(samples)
        if note:
            messages.warn("MAGI-1 Decode to Video File", messages.node_id(cls), [note])
        x, fps = samples["samples"], int(samples.get("magi_fps", 24))
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, out_dir, x.shape[4] * 8, x.shape[3] * 8)
        file = f"{name}_{counter:05}_.mp4"
        path = Path(folder) / file
        path.parent.mkdir(parents=True, exist_ok=True)
        show = ChunkProgress(str(messages.node_id(cls)), fps, still=False)  # the finished video shows, not a still
        memory.use(vae.loaded)
        writer = VideoWriter(path, fps, crf=crf)
        try:
            with writer:
                for i, n, frames in chunks:
                    writer.write(frames)
                    show.chunk(i, n, frames, f"chunk {i + 1}/{n} written: {writer.frames_written} frames, "
                                             f"{writer.frames_written / fps:.1f} s")
                    show.progress(i + 1, n)  # raises if the user pressed cancel (after the text: it is written)
                    del frames
        except BaseException:
            if writer.interrupted:
                text = f"stopped: the {writer.frames_written} frames written are kept in {subfolder}/{file}"
                logging.warning("MAGI-1 Decode to Video File %s", text)
                show.text(text)
            raise
        saved = ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)])
        return io.NodeOutput(InputImpl.VideoFromFile(str(path)), ui=saved)


NODES = [MagiDecodeToVideoFile]
