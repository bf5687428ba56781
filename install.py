"""Set up the MAGI-1 pack: fetch special_tokens.npz, and on request the official weights into ComfyUI's models folder.

ComfyUI-Manager runs this after `pip install -r requirements.txt`. It never installs or upgrades torch: the only
package it may install is huggingface_hub (for --download), with the installed torch pinned.

    python install.py                              # special_tokens.npz only (3 MB)
    python install.py --download 4.5B-distill      # + DiT, VAE and T5 into ComfyUI/models (resumable)
    python install.py --download 24B-distill-fp8 --no-t5 --models-dir /data/comfy/models --dry-run
    python install.py --list

Layout (what the shipped workflows name): models/magi/<4.5B_distill ...>/inference_weight*/..., models/magi/vae/,
models/text_encoders/t5-v1_1-xxl/. Files land in models/magi/.download first and move into place when complete
with the size the hub lists; an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PACK = Path(__file__).resolve().parent
REPO_ID = "sand-ai/MAGI-1"
TOKENS = dict(
    url="https://raw.githubusercontent.com/SandAI-org/MAGI-1/6ff822e74ded50611e81e1d0e115146b5c4dd2a5/"
        "example/assets/special_tokens.npz",
    size=3343124, sha256="b54bc664d5f4a722dfd8bb22201c025df61f22acddc07c0a2529d7b5cd6be5a7",
    dest=PACK / "magi_core" / "assets" / "special_tokens.npz",
)
# item -> (folder in the hub repo, folder under models/)
ITEMS = {
    "vae": ("ckpt/vae", "magi/vae"),
    "t5": ("ckpt/t5/t5-v1_1-xxl", "text_encoders/t5-v1_1-xxl"),
}
for _size in ("4.5B", "24B"):
    for _variant, _folder in (("base", "base"), ("distill", "distill"), ("distill-fp8", "distill_quant")):
        ITEMS[f"{_size}-{_variant}"] = (f"ckpt/magi/{_size}_{_folder}", f"magi/{_size}_{_folder}")
DITS = [k for k in ITEMS if k not in ("vae", "t5")]
STAGING = "magi/.download"


@dataclass
class Action:
    """One file of the plan. state: done (present, right size) | download (missing) | replace (wrong size)."""

    repo_path: str
    dest: Path
    size: int
    state: str


def item_name(name: str) -> str | None:
    """The --download item a name means: its own spelling in any case, with '_' for '-', or the folder it installs
    to (4.5B_distill, 24B_distill_quant: what the workflows and the DiT loader show); None if none."""
    key = name.strip().lower().replace("_", "-")
    for item, (_, dest) in ITEMS.items():
        if key in (item.lower(), dest.rsplit("/", 1)[-1].lower().replace("_", "-")):
            return item
    return None


def items_for(names: list[str], with_vae: bool = True, with_t5: bool = True) -> list[str]:
    """Requested items plus what a DiT needs to run (VAE, T5) unless turned off; unknown names are errors."""
    bad = [n for n in names if item_name(n) is None]
    for n in bad:
        variants = [k for k in DITS if k.lower().startswith(n.strip().lower() + "-")]
        if variants:  # a model size alone: which checkpoint of it
            raise SystemExit(f"--download {n}: name one of its checkpoints, {', '.join(variants[:-1])} or "
                             f"{variants[-1]} (python install.py --list shows where each goes)")
    if bad:
        raise SystemExit(f"unknown download {', '.join(bad)}: choose from {', '.join(ITEMS)}")
    out = list(dict.fromkeys(item_name(n) for n in names))
    if any(n in DITS for n in out):
        out += [n for n, on in (("vae", with_vae), ("t5", with_t5)) if on and n not in out]
    return out


def plan(items: list[str], remote: dict, models_dir: Path) -> list[Action]:
    """remote: {repo path: size} of the hub files. Every file under each item's hub folder, checked on disk."""
    actions = []
    for item in items:
        src, dst = ITEMS[item]
        files = sorted(p for p in remote if p.startswith(src + "/"))
        if not files:
            raise SystemExit(f"{item}: the hub lists no files under {REPO_ID}/{src} (renamed upstream?)")
        for p in files:
            dest = models_dir / dst / p[len(src) + 1:]
            size = remote[p]
            state = "download" if not dest.is_file() else ("done" if dest.stat().st_size == size else "replace")
            actions.append(Action(p, dest, size, state))
    return actions


def check_space(actions: list[Action], models_dir: Path, free: int | None = None) -> int:
    """Bytes still to fetch; SystemExit when the disk holding models_dir has less free space than that."""
    need = sum(a.size for a in actions if a.state != "done")
    if free is None:
        probe = models_dir
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
    if need > free:
        raise SystemExit(f"not enough disk space in {models_dir}: {need / 1e9:.1f} GB to download, "
                         f"{free / 1e9:.1f} GB free; free some space or use --models-dir")
    return need


def fetch(actions: list[Action], models_dir: Path, download) -> None:
    """download(repo_path, staging_dir) -> local file (resumes partial files); moved into place after a size check."""
    staging = models_dir / STAGING
    for i, a in enumerate(actions):
        if a.state == "done":
            continue
        print(f"[{i + 1}/{len(actions)}] {a.repo_path} ({a.size / 1e9:.2f} GB)", flush=True)
        local = Path(download(a.repo_path, staging))
        got = local.stat().st_size
        if got != a.size:
            raise SystemExit(f"{a.repo_path}: downloaded {got:,} bytes, the hub lists {a.size:,}: run install.py "
                             f"again to resume, or delete {local} to start this file over")
        a.dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, a.dest)
        a.state = "done"
    shutil.rmtree(staging, ignore_errors=True)


def comfyui_models_dir(pack: Path = PACK) -> Path | None:
    """ComfyUI/models when the pack sits in ComfyUI/custom_nodes/<pack>."""
    root = pack.parent.parent
    if pack.parent.name == "custom_nodes" and (root / "folder_paths.py").is_file():
        return root / "models"
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_tokens(source: str | None = None, dest: Path = TOKENS["dest"], expected: str = TOKENS["sha256"]) -> str:
    """special_tokens.npz from the official repo (or a local copy), checked by SHA-256. Returns what happened."""
    if dest.is_file() and sha256(dest) == expected:
        return f"{dest} is up to date"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    if source and not source.startswith(("http://", "https://")) and not Path(source).expanduser().is_file():
        raise SystemExit(f"--special-tokens {source}: no such file (give a local special_tokens.npz or an http(s) "
                         "address)")
    if source and Path(source).expanduser().is_file():
        shutil.copyfile(Path(source).expanduser(), tmp)
    else:
        with urllib.request.urlopen(source or TOKENS["url"], timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    got = sha256(tmp)
    if got != expected:
        tmp.unlink()
        raise SystemExit(f"{source or TOKENS['url']} has SHA-256 {got}, expected {expected}: it is not MAGI-1's "
                         f"special_tokens.npz (or it is corrupt)")
    os.replace(tmp, dest)
    return f"wrote {dest}"


def ensure_hub():
    """huggingface_hub, installed if missing, with the installed torch pinned (it never changes ComfyUI's torch)."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        import tempfile
        from importlib.metadata import PackageNotFoundError, version

        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "install", "huggingface_hub"]
            try:
                pin = Path(tmp) / "torch-pin.txt"
                pin.write_text(f"torch=={version('torch')}\n")
                cmd += ["-c", str(pin)]
            except PackageNotFoundError:
                pass
            subprocess.check_call(cmd)
    import huggingface_hub

    return huggingface_hub


def hub_listing(hub, items: list[str]) -> dict:
    api = hub.HfApi()
    remote = {}
    for item in items:
        for entry in api.list_repo_tree(REPO_ID, path_in_repo=ITEMS[item][0], recursive=True):
            if getattr(entry, "size", None) is not None and not entry.path.endswith("/"):
                remote[entry.path] = entry.size
    return remote


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--download", action="append", default=[], metavar="NAME",
                    help=f"one of: {', '.join(ITEMS)} (repeatable; any case, '_' for '-', or the folder it "
                         "installs to, e.g. 4.5B_distill)")
    ap.add_argument("--models-dir", type=Path, default=None, help="ComfyUI's models folder (default: found "
                    "from custom_nodes/<pack>)")
    ap.add_argument("--no-vae", action="store_true", help="do not add the VAE to a DiT download")
    ap.add_argument("--no-t5", action="store_true", help="do not add T5 (e.g. you use t5xxl_fp16.safetensors)")
    ap.add_argument("--special-tokens", default=None, help="a local special_tokens.npz (or URL) instead of GitHub")
    ap.add_argument("--skip-special-tokens", action="store_true",
                    help="do not fetch MAGI-1's special_tokens.npz (then turn off the sampler's use_hq and "
                         "use_duration)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan offline, download nothing")
    ap.add_argument("--list", action="store_true", help="list what can be downloaded")
    a = ap.parse_args(argv)
    listed_with = [name for name, given in (("--download", a.download), ("--dry-run", a.dry_run),
                                            ("--models-dir", a.models_dir), ("--no-vae", a.no_vae), ("--no-t5", a.no_t5),
                                            ("--special-tokens", a.special_tokens),
                                            ("--skip-special-tokens", a.skip_special_tokens)) if given]
    if a.list and listed_with:  # it would be ignored
        print(f"error: --list only lists the downloads: leave out {', '.join(listed_with)}", file=sys.stderr)
        return 2
    if a.skip_special_tokens and a.special_tokens:
        print("error: --skip-special-tokens and --special-tokens contradict each other: give one of them",
              file=sys.stderr)
        return 2
    if a.list:
        for name, (src, dst) in ITEMS.items():
            print(f"{name:18s} {REPO_ID}/{src} -> models/{dst}")
        return 0
    if a.dry_run and a.special_tokens and not a.special_tokens.startswith(("http://", "https://")) \
            and not Path(a.special_tokens).expanduser().is_file():
        print(f"error: --special-tokens {a.special_tokens}: no such file", file=sys.stderr)
        return 2
    if a.dry_run and not a.download:
        print("error: --dry-run shows what --download NAME would fetch: add --download (names: --list)",
              file=sys.stderr)
        return 2
    try:  # a mistyped name: said before anything is fetched
        items = items_for(a.download, not a.no_vae, not a.no_t5)
    except SystemExit as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0  # exit 1 at the end when the special tokens could not be installed (a script chaining us notices)
    if not a.skip_special_tokens and not a.dry_run:
        try:
            print(install_tokens(a.special_tokens))
        except (OSError, SystemExit) as e:
            failed = 1
            print(f"error: special_tokens.npz not installed ({e}); the sampler needs it unless use_hq and "
                  "use_duration are off. Rerun install.py when online, or --special-tokens PATH", file=sys.stderr)
    if not a.download:
        return failed
    try:
        models = a.models_dir.expanduser() if a.models_dir else comfyui_models_dir()
        if a.models_dir and not models.is_dir():
            raise SystemExit(f"--models-dir {a.models_dir} is not a folder: give ComfyUI's models folder (the one "
                             "holding checkpoints/ and vae/), or create the folder first if you mean a new one")
        if models is None and not a.dry_run:
            raise SystemExit("cannot tell where ComfyUI's models folder is (this folder is not in "
                             "ComfyUI/custom_nodes/): pass --models-dir")
    except SystemExit as e:  # a mistake in the command: exit 2, as argparse and python -m magi_core do
        print(f"error: {e}", file=sys.stderr)
        return 2
    if models is None:  # a dry run outside ComfyUI: the plan relative to the models folder
        models = Path("<ComfyUI models folder>")
        print("(this folder is not in ComfyUI/custom_nodes/: paths are shown relative to ComfyUI's models folder; "
              "the download itself needs --models-dir)")
    if a.dry_run:  # offline: what would go where, and what is there already (file names and sizes: the hub's)
        for item in items:
            src, dst = ITEMS[item]
            dest = models / dst
            have = [p for p in dest.rglob("*") if p.is_file()] if dest.is_dir() else []
            state = f"{len(have)} files, {sum(p.stat().st_size for p in have) / 1e9:.2f} GB there" if have else "absent"
            print(f"{item:18s} {REPO_ID}/{src} -> {dest} ({state})")
        print("dry run: nothing downloaded; the download lists the hub's files and fetches the missing ones")
        return 0
    hub = ensure_hub()
    try:
        remote = hub_listing(hub, items)
    except Exception as e:  # offline, proxy, hub down
        raise SystemExit(f"cannot list {REPO_ID} on the Hugging Face hub ({type(e).__name__}: {e}): check the "
                         "network (HF_ENDPOINT for a mirror, HF_TOKEN if needed) and run install.py again") from None
    actions = plan(items, remote, models)
    need = check_space(actions, models)
    for act in actions:
        print(f"{act.state:8s} {act.size / 1e9:7.2f} GB  {act.dest}")
    print(f"{need / 1e9:.1f} GB to download into {models}")

    def download(repo_path, staging):
        return hub.hf_hub_download(REPO_ID, repo_path, local_dir=staging)

    fetch(actions, models, download)
    print("done: restart ComfyUI or press R, then pick the models in the MAGI-1 loaders")
    return failed


if __name__ == "__main__":
    sys.exit(main())
