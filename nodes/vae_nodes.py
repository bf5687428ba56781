"""VAE nodes: IMAGE frames -> prefix LATENT (image-to-video, video continuation), LATENT -> IMAGE frames."""
from __future__ import annotations

import comfy.utils
from comfy_api.latest import io

from magi_core.pipeline import encode_prefix
from magi_core.settings import FPS_MAX, FPS_MIN, SamplingSettings
from magi_core.vae import VAE_PRESETS
from magi_core.vae.tiling import check_temporal_overlap, encoded_frames
from magi_core.video import FRAMES_PER_LATENT, select_prefix_frames

from . import choices, memory, messages
from .latents import decode_video, missing_keys_note
from .sampler_settings import SIZE, TEMPORAL_OVERLAP, TILE_FRAMES, queue_problems
from .types import CATEGORY, MagiVAE


def tile_inputs(tile_frames_default: int, tile_frames_tip: str):
    return [
        io.Int.Input("tile_size", default=256, min=16, max=4096, step=16,
                     tooltip="spatial tile in pixels (reference 256); smaller tiles use less memory"),
        io.Float.Input("tile_overlap", default=0.25, min=0.0, max=0.75, step=0.05, round=0.01,
                       tooltip="fraction of a tile shared with its neighbour (reference 0.25)"),
        io.Int.Input("tile_frames", default=tile_frames_default, step=4, tooltip=tile_frames_tip, **TILE_FRAMES),
    ]


def decode_tiling_problems(tile_frames=None, temporal_overlap=None) -> bool | str:
    """The decode nodes' temporal tiling at queue time (a mistake would otherwise surface after the sampler ran):
    the widgets' limits, then temporal_overlap against the tile that tile_frames gives (with tile_frames 0 the tile
    is half the latent's frame rate, known only when the node runs). True, or the problems."""
    problems = queue_problems([("tile_frames", tile_frames, TILE_FRAMES),
                               ("temporal_overlap", temporal_overlap, TEMPORAL_OVERLAP)])
    if problems is not True or not tile_frames:
        return problems
    if tile_frames < FRAMES_PER_LATENT:
        return f"tile_frames must be 0 (half the frame rate) or at least {FRAMES_PER_LATENT}, got {tile_frames}"
    if temporal_overlap is not None:
        try:  # the rule tiled_decode applies; fps plays no part once tile_frames is set (0: not mentioned)
            check_temporal_overlap(VAE_PRESETS["magi1"], 0, tile_frames, temporal_overlap)
        except ValueError as e:
            return str(e)
    return True


def decode_tile_inputs():
    """Tiling widgets of the decoding nodes (MAGI VAE Decode, MAGI Decode to Video File)."""
    return [
        *tile_inputs(0, "frames per temporal tile; 0 = fps // 2 (the reference)"),
        io.Int.Input("temporal_overlap", default=0, **TEMPORAL_OVERLAP,
                     tooltip="latent frames shared by consecutive temporal tiles (0 = reference; 1 removes "
                             "the seam every fps // 2 frames at ~1.5x the decode time); at most tile_frames / 4 - 1: "
                             "2 with tile_frames 0 at 24 fps"),
    ]


class MagiVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiVAEEncode", display_name="MAGI-1 VAE Encode (prefix)", category=CATEGORY,
            description="Encode the start of a video for the sampler's prefix: one image (image-to-video) or "
                        "video frames (continuation). Frames are resized to width x height with ffmpeg's scaler, "
                        "as the reference does.",
            inputs=[
                MagiVAE.Input("vae"),
                io.Image.Input("image", tooltip="one image, or a batch of video frames"),
                io.Int.Input("width", default=720, **SIZE, step=16, tooltip="same as the sampler's"),
                io.Int.Input("height", default=720, **SIZE, step=16, tooltip="same as the sampler's"),
                io.Combo.Input("resize", options=choices.RESIZE, default="stretch",
                               tooltip="stretch (the reference), crop to the aspect ratio, or pad with black"),
                io.Int.Input("max_frames", default=0, min=0, max=100000,
                             tooltip="video prefix: at most this many frames (0 = all); every 4 frames of each "
                                     "fps // 2-frame tile give one latent frame, a last tile of 1 frame one more"),
                io.Combo.Input("take", options=choices.TAKE, default="end",
                               tooltip="video prefix: the last frames (continue the clip) or the first ones"),
                *tile_inputs(0, "frames per temporal tile; 0 = fps // 2 (the reference)"),
                # appended last: widgets saved in older workflows keep their positions
                io.Int.Input("fps", default=24, min=FPS_MIN, max=FPS_MAX,
                             tooltip="same as the sampler's: the VAE encodes video in tiles of fps // 2 frames"),
            ],
            outputs=[io.Latent.Output(display_name="prefix")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None):
        """At queue time, before the VAE loads: the size's range and multiple of 16 (an API prompt can send any)."""
        return queue_problems([("width", width, SIZE), ("height", height, SIZE)])

    @classmethod
    def execute(cls, vae, image, width, height, fps, resize, max_frames, take, tile_size, tile_overlap, tile_frames):
        choices.require_all([("resize", resize, choices.RESIZE), ("take", take, choices.TAKE)])  # choices.py
        frames = select_prefix_frames(image[..., :3].float().cpu(), max_frames or None, take)
        try:  # a frame count the VAE cannot encode: say so before it loads
            encoded_frames(frames.shape[0], tile_frames or fps // 2)
        except ValueError as e:
            raise ValueError(f"{e} (max_frames)") from None
        memory.use(vae.loaded)
        s = SamplingSettings(width=width, height=height, fps=fps)
        latents = encode_prefix(vae.model, frames, s, policy=resize, tile_size=tile_size, tile_overlap=tile_overlap,
                                tile_frames=tile_frames or None)
        notes = [f"max_frames {max_frames}, but the {'video has' if image.shape[0] > 1 else 'image is'} "
                 f"{image.shape[0]} frame{'s' if image.shape[0] > 1 else ''}: the prefix is all of "
                 f"{'them' if image.shape[0] > 1 else 'it'} (the sampler's panel counted {max_frames})"] \
            if max_frames and max_frames > image.shape[0] else []
        return io.NodeOutput({"samples": latents.cpu(), "magi_prefix_frames": int(frames.shape[0]),
                              "magi_fps": int(fps)}, ui=messages.warn("MAGI-1 VAE Encode", messages.node_id(cls), notes))


class MagiVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiVAEDecode", display_name="MAGI-1 VAE Decode", category=CATEGORY,
            description="Decode the sampler's latent to IMAGE frames, chunk by chunk (the reference's frame counts). "
                        "Frames the sampler already decoded for its previews are reused when the settings match.",
            inputs=[
                MagiVAE.Input("vae"),
                io.Latent.Input("samples"),
                *decode_tile_inputs(),
            ],
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, tile_frames=None, temporal_overlap=None):  # shown under both: either one can change
        return decode_tiling_problems(tile_frames, temporal_overlap)

    @classmethod
    def execute(cls, vae, samples, tile_size, tile_overlap, tile_frames, temporal_overlap):
        note = missing_keys_note(samples)
        tiling = dict(tile_size=tile_size, tile_overlap=tile_overlap, tile_frames=tile_frames,
                      temporal_overlap=temporal_overlap)
        memory.use(vae.loaded)
        pbar = comfy.utils.ProgressBar(1)
        frames = decode_video(vae.model, samples, tiling, vae_key=vae.key,
                              progress=lambda done, total: pbar.update_absolute(done, total))
        return io.NodeOutput(frames, ui=messages.warn("MAGI-1 VAE Decode", messages.node_id(cls), [note] if note else []))


NODES = [MagiVAEEncode, MagiVAEDecode]
