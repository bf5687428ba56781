"""Command line: `python -m magi_core <command> ...` (inspect, convert, generate).

Each command is a `Command(help, add_arguments, run)`. Commands with a module of their own (LAZY_COMMANDS: module and
help line) expose `add_arguments(parser)` and `run(args) -> int`; the module is imported only when its command runs.

A user mistake (ValueError, a missing or unreadable file) ends with one paragraph `error: ...` on stderr and exit
code 2, without a traceback; `--debug` shows the traceback. (`inspect` of a file it finds wrong, e.g. not a MAGI-1
DiT, says `error: ...` too and exits 1: the diagnosis' answer.)
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Callable

from . import startup


@dataclass
class Command:
    help: str
    add_arguments: Callable
    run: Callable


LAZY_COMMANDS = {"generate": ("magi_core.cli_generate", "generate a video (t2v / i2v / v2v, per-chunk prompts); --demo "
                                                       "runs a tiny random model offline")}


# ----------------------------------------------------------------------------- inspect


def _inspect_args(p: argparse.ArgumentParser):
    p.add_argument("source", help="checkpoint folder/file, or a preset such as 4.5B, 24B-distill, 4.5B-distill-fp8, tiny")
    p.add_argument("--variant", help="base | distill | distill-fp8 (distill cannot be seen in the weights)")
    p.add_argument("--json", action="store_true", help="print the report as (indented) JSON instead of text")
    p.add_argument("--brief", action="store_true", help="omit the parameter table")


def _print_report(r: dict, brief: bool):
    if r["kind"] == "preset":
        print(f"MAGI-1 DiT preset {r['source']}")
    else:
        print(f"{'checkpoint' if 'error' in r else 'MAGI-1 DiT checkpoint'} {r['location']} ({r['layout']})")
        for f in r["files"]:
            print(f"  file {f}")
    if r.get("size"):
        how = f" (distill: {r['distill_source']})" if r.get("distill_source") else ""
        print(f"size {r['size']}, variant {r['variant']}{how}")
    print(f"{r['num_params']:,} parameters in {r['num_tensors']} tensors")
    for note in r.get("notes", []):
        print(f"note: {note}")
    if not brief:
        width = max((len(n) for n in r["params"]), default=10)
        print(f"\n{'name':<{width}}  {'shape':<22} dtype")
        stored_dtypes = r.get("stored_dtypes", {})
        for n, p in r["params"].items():
            stored = f" (stored {stored_dtypes[n]})" if n in stored_dtypes else ""
            print(f"{n:<{width}}  {str(tuple(p['shape'])):<22} {p['dtype']}{stored}")
    if r["kind"] == "checkpoint":
        print()
        if "error" in r:
            print("ERROR: " + r["error"])  # after the table too, where the eye ends up
        elif r["ok"]:
            c = r["comparison"]
            print(f"OK: matches the expected {r['size']} {r['variant']} table "
                  f"({len(c['dtype_changes'])} tensors stored in an unusual dtype)")
        else:
            print("WILL NOT LOAD:\n" + r["comparison"]["report"])


def _inspect_run(args) -> int:
    from .checkpoint import inspect

    r = inspect(args.source, variant=args.variant)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0 if r["ok"] else 1
    if "error" in r:  # not a DiT, or a broken one: said first, then what the files hold
        print(f"error: {r['error']}", file=sys.stderr)
    _print_report(r, args.brief)
    return 0 if r["ok"] else 1  # 1: the diagnosis found a problem (2: the command itself was misused)


# ----------------------------------------------------------------------------- convert


def _convert_args(p: argparse.ArgumentParser):
    p.add_argument("source", help="official folder (…/4.5B_distill or its inference_weight.distill), or any layout")
    p.add_argument("out", help="output .safetensors file (e.g. ComfyUI/models/diffusion_models/magi1_4.5B_distill.safetensors)")
    p.add_argument("--variant", help="base | distill | distill-fp8, when the folder name does not say")


def _convert_run(args) -> int:
    from .checkpoint import convert

    r = convert(args.source, args.out, variant=args.variant)
    print(f"wrote {r['path']}: {r['size']} {r['variant']}, {r['num_tensors']} tensors, {r['bytes']:,} bytes")
    return 0


COMMANDS = {
    "inspect": Command("show size, variant and parameter table of a checkpoint or preset; diagnose a download",
                       _inspect_args, _inspect_run),
    "convert": Command("merge an official weights folder into one safetensors file (ComfyUI diffusion_models)",
                       _convert_args, _convert_run),
}


def _lazy(module: str, help: str) -> Command:
    mod = importlib.import_module(module)
    return Command(help, mod.add_arguments, mod.run)


def unrecognized(parser: argparse.ArgumentParser, unknown: list[str]):
    """parser.error for arguments it does not know (exit 2), naming the options a misspelled one may mean."""
    import difflib

    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for arg in unknown[:unknown.index("--")] if "--" in unknown else unknown:  # after '--': not options
        name = arg.split("=", 1)[0]
        if name.startswith("-") and name not in options:
            close = difflib.get_close_matches(name, options, n=2, cutoff=0.7)
            if close:
                hints.append(f"{name}: did you mean {' or '.join(close)}?")
    parser.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = dict(COMMANDS)
    chosen = argv[0] if argv else None
    parser = startup.Parser(prog="python -m magi_core", description="MAGI-1 tools")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (module, help) in LAZY_COMMANDS.items():
        if name == chosen:
            commands[name] = _lazy(module, help)
    parsers = {}
    for name, cmd in commands.items():
        p = parsers[name] = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    for name in LAZY_COMMANDS.keys() - commands.keys():
        sub.add_parser(name, help=LAZY_COMMANDS[name][1])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser (its usage line), with the nearest option names
        unrecognized(parsers.get(args.command, parser), unknown)
    if args.command is None:
        parser.print_help(sys.stderr)
        print(f"\nerror: name a command ({', '.join([*COMMANDS, *LAZY_COMMANDS])}), e.g. python -m magi_core "
              "generate --demo --output demo.mp4", file=sys.stderr)
        return 2
    try:
        if args.command not in LAZY_COMMANDS:  # (a lazy command takes held signals itself, after its imports)
            from . import checkpoint  # noqa: F401 -- torch, safetensors, numpy: while Ctrl-C is held (startup.py)

            signum = startup.release()
            if signum:
                startup.say(f"\n{startup.stopped_by(signum)}: nothing written", file=sys.stderr)
                return 128 + signum
        return commands[args.command].run(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        if args.debug:
            raise
        if isinstance(e, OSError):
            text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror or str(e)
            print(f"error: {text}", file=sys.stderr)
            return 1 if e.errno in startup.DISK_FULL else 2
        print(f"error: {e}", file=sys.stderr)
        return 2  # a mistake to correct (README)


if __name__ == "__main__":
    startup.allocator_defaults()
    startup.hold()  # until the command's libraries are imported (magi_core/startup.py)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C twice while starting, or during inspect (convert removes its .part file)
        startup.say("\ninterrupted: nothing written", file=sys.stderr)
        sys.exit(130)
