"""The MAGI-1 sampler (text/image/video-to-video), its advanced options, and the multi-GPU settings."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from magi_core.sampling.executor import SamplingCancelled
from magi_core.settings import FPS_MAX, FPS_MIN, steps_problem

from . import choices, memory, messages
from .chunk_progress import ChunkProgress
from .generation import Hooks, create_video_fps_notes, run
from .loading import load_dit_weights
from .multigpu import make_settings, release_pool
from .sampler_settings import SIZE, STEPS, WINDOW_SIZE, build_settings, queue_problems, sampler_options
from .types import CATEGORY, MagiConditioning, MagiModel, MagiMultiGPU, MagiSamplerOptions, MagiVAE
from .unfinished import PREFIX, save_unfinished

PROGRESS_TEXT_S = 1.0  # the "DiT pass i/total" line under the sampler is sent at most this often


class ComfyHooks(Hooks):
    """Hooks for a run inside ComfyUI: model management, progress bar, interrupt, previews."""

    def __init__(self, node_id: str, fps: int, device: str | None = None):
        self.device = device
        self.notes = []  # shown under every chunk line (the node shows one text at a time)
        self.show = ChunkProgress(node_id, fps)
        self.loaded = None
        self.done = None  # (finished chunks, chunks) once the first chunk is done
        self.shown_at = 0.0  # when the progress line was last sent

    @property
    def images(self):
        return self.show.images

    def load_dit(self, handle, vae):
        device = memory.resolve_device(self.device or handle.runtime.device, "dit")
        room = handle.resident_nbytes  # the whole model, or with block swap its resident part + 2 layers
        loaded = load_dit_weights(handle, device, before_load=lambda: memory.free_for(room, device))
        memory.register_dit(loaded, device)  # with block swap: only the resident part (memory.py)
        memory.use(loaded, *([vae.loaded] if vae is not None else []),  # together: nothing moves while streaming
                   memory_required=handle.streamed_nbytes)
        memory.keep("dit", loaded)
        self.loaded = loaded
        return loaded.model

    def progress(self, i, total, chunk):
        self.show.progress(i, total)  # also raises if the user pressed cancel
        now = time.monotonic()
        if now - self.shown_at >= PROGRESS_TEXT_S or i == total:  # a line the user reads, not one per pass
            self.shown_at = now
            done = f"{self.done[0]}/{self.done[1]} chunks done" if self.done else "first chunk in progress"
            self.show.text("\n".join([f"DiT pass {i}/{total}, {done}", *self.notes]))

    def cancelled(self):
        return memory.interrupted()

    def chunk_done(self, index, total, frames):
        self.done, self.shown_at = (index + 1, total), time.monotonic()  # the chunk line stays a moment
        text = "\n".join([f"chunk {index + 1}/{total} done", *self.notes])
        if frames is None:
            self.show.text(text)
        else:
            self.show.chunk(index, total, frames, text)

    def note(self, text):
        super().note(text)
        self.notes.append(text)
        self.show.text("\n".join(self.notes))

    def keep_unfinished(self, latent, frames, vae):
        n, x = len(latent["magi_chunks"]), latent["samples"]
        self.show.text(f"stopped: saving the {n} finished chunk(s) ... (Cancel again to keep only their latent)")
        memory.clear_interrupt()  # a Cancel from now on means: stop decoding them for the video
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, _, _ = folder_paths.get_save_image_path(PREFIX, out_dir, x.shape[4] * 8, x.shape[3] * 8)
        files = save_unfinished(latent, frames, vae, Path(folder) / f"{name}_{counter:05}_", stop=memory.interrupted,
                                progress=lambda i, total: self.show.text(f"stopped: saved chunk {i}/{total} ..."))
        where = " and ".join(str(Path(f).relative_to(out_dir)) for f in files)
        text = f"stopped after {n} finished chunk(s): kept in the output folder as {where}"
        logging.warning("MAGI-1 Sampler %s", text)
        self.show.text(text)


class MagiSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiSampler", display_name="MAGI-1 Sampler", category=CATEGORY,
            description="Generate video chunk by chunk (24 frames each). No prefix: text-to-video; a one-frame prefix: "
                        "image-to-video; a video prefix: continuation. With a VAE connected, each finished chunk is "
                        "decoded and shown while the next one denoises. Cancel (or an error) keeps the chunks finished so "
                        "far in the output folder (MAGI-1_unfinished_00001_.mp4).",
            inputs=[
                MagiModel.Input("model"),
                MagiConditioning.Input("conditioning"),
                io.Int.Input("width", default=720, **SIZE, step=16,
                             tooltip="video width in pixels, a multiple of 16 (720x720 and 1280x720 are the "
                                     "reference sizes); with a prefix, MAGI VAE Encode follows the sampler's size"),
                io.Int.Input("height", default=720, **SIZE, step=16,
                             tooltip="video height in pixels, a multiple of 16"),
                io.Int.Input("num_frames", default=96, min=4, max=100000, step=4,
                             tooltip="new frames asked for, rounded up to whole chunks of 24 frames (the node shows "
                                     "the exact count before the run): an image prefix adds its frame (96 -> 120); "
                                     "a video prefix is not output, so the chunk holding its end outputs only its "
                                     "new frames (32-frame prefix, 96 asked -> 109); fps below 24 gives fewer frames "
                                     "per chunk"),
                io.Int.Input("fps", default=24, min=FPS_MIN, max=FPS_MAX,
                             tooltip="MAGI-1 is trained at 24 fps. As in the reference, fps also sets the VAE's "
                                     "temporal tiles (fps/2 frames), so below 24 a chunk decodes to fewer frames "
                                     "(12 fps: 6 per chunk). Give Create Video the same fps"),
                io.Int.Input("steps", default=16, **STEPS, step=4,
                             tooltip="denoising steps per chunk; a multiple of window_size and of 4 (e.g. 16 for "
                                     "distill, 32-64 for base)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="noise seed; the same seed and settings give the same video"),
                io.Int.Input("window_size", default=4, **WINDOW_SIZE,
                             tooltip="chunks denoised together (4 = reference; 1 = least memory)"),
                io.Float.Input("text_scale", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="text guidance (base models only: distill/fp8 run without guidance and "
                                       "ignore it; greyed out then)"),
                io.Float.Input("prev_chunk_scale", default=1.5, min=0.0, max=10.0, step=0.1,
                               tooltip="guidance towards the previous chunks (base models only; greyed out for "
                                       "distill/fp8)"),
                io.Float.Input("prev_chunks_scale", default=0.7, min=0.0, max=1.0, step=0.05,
                               tooltip="distill: weight of the with-context pass for the nearly clean chunk (0.7)"),
                io.Boolean.Input("use_hq", default=True, tooltip="prepend the HQ special token (reference: on)"),
                io.Boolean.Input("use_duration", default=True,
                                 tooltip="prepend the chunks-remaining special token (reference: on)"),
                io.Combo.Input("preview", options=choices.PREVIEW, default="decoded chunks",
                               tooltip="decode each finished chunk for the UI (needs the vae input); "
                                       "MAGI VAE Decode then reuses those frames"),
                io.Boolean.Input("force_offload", default=False,
                                 tooltip="move the DiT off the GPU when done (ComfyUI also offloads it when needed)"),
                io.Latent.Input("prefix", optional=True, tooltip="MAGI VAE Encode output: image or video prefix"),
                MagiVAE.Input("vae", optional=True, tooltip="for chunk previews"),
                MagiSamplerOptions.Input("options", optional=True),
                MagiMultiGPU.Input("multigpu", optional=True),
            ],
            outputs=[io.Latent.Output(display_name="samples")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, steps=None, window_size=None, width=None, height=None):
        """At queue time, before any model loads: the widgets' ranges (ComfyUI skips its own check for inputs this
        method takes), a width or height that is not a multiple of 16 (ComfyUI does not enforce a widget's step, so
        an API prompt can send one), steps against window_size. ComfyUI shows the result on each of these four
        inputs, so each problem names its input (choices.py). The rest is checked when the sampler starts."""
        result = queue_problems([("steps", steps, STEPS), ("window_size", window_size, WINDOW_SIZE),
                                 ("width", width, SIZE), ("height", height, SIZE)])
        if result is True and None not in (steps, window_size):
            return steps_problem(steps, window_size) or True
        return result

    @classmethod
    def execute(cls, model, conditioning, width, height, num_frames, fps, steps, seed, window_size, text_scale,
                prev_chunk_scale, prev_chunks_scale, use_hq, use_duration, preview, force_offload, prefix=None,
                vae=None, options=None, multigpu=None):
        choices.require_all([("preview", preview, choices.PREVIEW)])
        s = build_settings(width, height, num_frames, fps, steps, seed, window_size, text_scale, prev_chunk_scale,
                           prev_chunks_scale, use_hq, use_duration, options)
        show = preview != "off"
        one_gpu = multigpu.devices[0] if multigpu is not None and not multigpu.wants_pool else None
        hooks = ComfyHooks(str(messages.node_id(cls)), fps, device=one_gpu)
        for note in create_video_fps_notes(getattr(cls.hidden, "prompt", None), messages.node_id(cls), fps):
            Hooks.note(hooks, note)  # console only: in the UI js/magi.js shows it on the node while editing
        if multigpu is not None and multigpu.wants_pool:
            memory.track_pool(release_pool)  # ComfyUI frees the workers with its models (memory.py)
        try:
            latent = run(model, conditioning, s, hooks, prefix=prefix, vae=vae, preview=show, multigpu=multigpu)
        except SamplingCancelled:
            memory.raise_interrupt()
        if force_offload and hooks.loaded is not None:
            memory.offload(hooks.loaded)
        ui = {"images": hooks.images, "animated": (True,)} if hooks.images else None
        return io.NodeOutput(latent, ui=ui)


class MagiSamplerOptionsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiSamplerOptions", display_name="MAGI-1 Sampler Options", category=CATEGORY,
            description="Advanced sampler settings (defaults = the official configs). Empty text = default.",
            inputs=[
                io.Combo.Input("cfg_number", options=choices.CFG_NUMBER, default="auto",
                               tooltip="guidance passes: auto = 3 for base, 1 for distill/fp8"),
                io.String.Input("cfg_t_range", default="", tooltip="5 flow times, e.g. 0, 0.0217, 0.1, 0.3, 0.999"),
                io.String.Input("text_scales", default="", tooltip="5 values, e.g. 7.5, 7.5, 7.5, 0, 0"),
                io.String.Input("prev_chunk_scales", default="", tooltip="5 values, e.g. 1.5, 1.5, 1.5, 1, 1"),
                io.String.Input("noise2clean_kvrange", default="", tooltip="e.g. 5, 4, 3, 2"),
                io.Int.Input("clean_chunk_kvrange", default=1, min=1, max=16,
                             tooltip="chunks of context a finished chunk attends to when it is written to the KV "
                                     "cache (reference 1)"),
                io.Float.Input("clean_t", default=0.9999, min=0.5, max=1.0, step=0.0001,
                               tooltip="flow time given to finished chunks used as context (reference 0.9999)"),
                io.String.Input("shortcut_mode", default="8,16,16", tooltip="12-step distill grid per quarter"),
                io.Float.Input("distill_nearly_clean_threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="distill: a chunk past this flow time counts as nearly clean and gets the "
                                       "extra text-only pass (reference 0.3)"),
                io.Boolean.Input("per_chunk_noise", default=False,
                                 tooltip="noise that does not change with the video length"),
                io.Boolean.Input("kv_offload", default=False, tooltip="keep the KV cache in host memory"),
                io.Boolean.Input("negative_special_tokens", default=False,
                                 tooltip="put the CAPTION, LOGO, TRANS and BORDERNESS special tokens in the null "
                                         "caption, as a negative prompt (base models with guidance; reference: off)"),
                io.Boolean.Input("early_first_chunk", default=False, optional=True,  # older API prompts lack it
                                 tooltip="finish the first chunk before the others start (same result, same total "
                                         "work): the first preview arrives 3.4x sooner (4.5B distill 720x720 on an "
                                         "H100: 4.96 s instead of 16.9 s; README); costs memory for the first "
                                         "chunk's keys/values (peak 29 instead of 15 GiB there; host memory with "
                                         "kv_offload)"),
            ],
            outputs=[MagiSamplerOptions.Output(display_name="options")],
        )

    @classmethod
    def validate_inputs(cls, cfg_number=None, cfg_t_range=None, text_scales=None, prev_chunk_scales=None,
                        noise2clean_kvrange=None, shortcut_mode=None):
        """At queue time, before any model loads: the choice and the text fields, through the same check as execute
        (sampler_options; a linked field, not known yet, counts as its default). ComfyUI shows the result on each of
        these six inputs, so the message names the field (choices.py)."""
        given = dict(cfg_number=cfg_number, cfg_t_range=cfg_t_range, text_scales=text_scales,
                     prev_chunk_scales=prev_chunk_scales, noise2clean_kvrange=noise2clean_kvrange,
                     shortcut_mode=shortcut_mode)
        try:
            sampler_options(**{k: v for k, v in given.items() if v is not None})
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, **kwargs):
        return io.NodeOutput(sampler_options(**kwargs))


class MagiMultiGPUSettingsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiMultiGPUSettings", display_name="MAGI-1 Multi-GPU Settings", category=CATEGORY,
            description="Run the sampler on several GPUs (Ulysses context parallel in a pool of worker processes, "
                        "one per GPU, kept alive between runs). Connect to the sampler's multigpu input.",
            inputs=[
                io.Combo.Input("devices", options=choices.gpu_sets(memory.cuda_count()), default="all",
                               tooltip="the GPUs to run on: all visible ones, or the first 2, 3, ... (API prompts may "
                                       "name any list, e.g. '1,3'); 'cpu' runs two CPU processes (tests only)"),
                io.Int.Input("cp_size", default=0, min=0, max=64,
                             tooltip="context-parallel size (0 = one rank per selected device); must divide the "
                                     "attention heads (24 for 4.5B, 48 for 24B)"),
                io.Boolean.Input("leave_gpu0_free", default=False,
                                 tooltip="keep GPU 0 for ComfyUI itself (T5, VAE, other models)"),
            ],
            outputs=[MagiMultiGPU.Output(display_name="multigpu")],
        )

    @classmethod
    def execute(cls, devices, cp_size, leave_gpu0_free):
        return io.NodeOutput(make_settings(devices, cp_size, leave_gpu0_free, memory.cuda_count()))


NODES = [MagiSampler, MagiSamplerOptionsNode, MagiMultiGPUSettingsNode]
