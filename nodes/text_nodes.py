"""Text nodes: MAGI T5 encode, the per-chunk prompt schedule, and the bridge from ComfyUI's T5-XXL CLIP."""
from __future__ import annotations

from comfy_api.latest import io

from magi_core.pipeline import encode_prompts

from . import memory, messages
from .conditioning import ClipT5, check_prompt
from .types import CATEGORY, MagiConditioning, MagiT5

PROMPT_HELP = ("one prompt for the whole video, or one range per line: '0-1: ...' (chunk indices, 1 chunk = 24 "
               "frames), '0s-2.5s: ...' (seconds), '3-: ...' (to the end)")
SCHEDULE_EXAMPLE = ("0-1: a red fox trots through fresh snow in a birch forest, morning light\n"
                    "2-: the fox stops, looks up and leaps into a snowdrift")


def queue_check(text) -> bool | str:
    """A prompt or schedule widget at queue time, before any model loads (validate_inputs of the three text nodes):
    syntax, overlaps, gaps, an empty prompt, prompts the caption cleaner empties; what execute checks again (the
    video's length is checked at the sampler). None (a linked input, not known yet) passes."""
    if text is None:
        return True
    try:
        check_prompt(text)
    except ValueError as e:
        return str(e)
    return True


class MagiTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiTextEncode", display_name="MAGI-1 Text Encode", category=CATEGORY,
            description="Encode a prompt (or a per-chunk prompt schedule) with MAGI-1's T5. Each distinct prompt is "
                        "encoded once; the special tokens are added per chunk by the sampler.",
            inputs=[
                MagiT5.Input("t5"),
                io.String.Input("prompt", multiline=True, default="", tooltip=PROMPT_HELP),
            ],
            outputs=[MagiConditioning.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompt=None):  # one input: see choices.py on validate_inputs
        return queue_check(prompt)

    @classmethod
    def execute(cls, t5, prompt):
        schedule, warnings = check_prompt(prompt)
        ui = messages.warn("MAGI-1 Text Encode", messages.node_id(cls), warnings)
        memory.use(t5.loaded)
        return io.NodeOutput(encode_prompts(t5.encoder, schedule), ui=ui)


class MagiPromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiPromptSchedule", display_name="MAGI-1 Prompt Schedule", category=CATEGORY,
            description="A prompt per chunk range, checked here (syntax, overlaps, gaps) and shown as a timeline "
                        "for the connected sampler's length. Feed it into a MAGI text encoder's prompt.",
            inputs=[
                io.String.Input("schedule", multiline=True, default=SCHEDULE_EXAMPLE, tooltip=PROMPT_HELP),
            ],
            outputs=[io.String.Output(display_name="prompt")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, schedule=None):  # one input: see choices.py on validate_inputs
        return queue_check(schedule)

    @classmethod
    def execute(cls, schedule):
        _, warnings = check_prompt(schedule)
        return io.NodeOutput(schedule, ui=messages.warn("MAGI-1 Prompt Schedule", messages.node_id(cls), warnings))


class MagiCLIPTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiCLIPTextEncode", display_name="MAGI-1 Text Encode (ComfyUI T5 CLIP)", category=CATEGORY,
            description="Encode a prompt or prompt schedule with ComfyUI's own T5-XXL (CLIPLoader with a "
                        "t5xxl_*.safetensors file, type sd3/pixart/mochi/ltxv), the way MAGI-1's T5 path does: "
                        "caption cleaning, no weights syntax, no padding, 800 tokens at most.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("prompt", multiline=True, default="", tooltip=PROMPT_HELP),
            ],
            outputs=[MagiConditioning.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompt=None):  # one input: see choices.py on validate_inputs
        return queue_check(prompt)

    @classmethod
    def execute(cls, clip, prompt):
        schedule, warnings = check_prompt(prompt)
        ui = messages.warn("MAGI-1 Text Encode (ComfyUI T5 CLIP)", messages.node_id(cls), warnings)
        return io.NodeOutput(encode_prompts(ClipT5(clip), schedule), ui=ui)


NODES = [MagiTextEncode, MagiPromptSchedule, MagiCLIPTextEncode]
