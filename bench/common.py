"""Shared bits of the benchmark scripts: device sync and result output."""
from __future__ import annotations

import json

import torch


def sync(dev=None):
    if torch.cuda.is_available() and (dev is None or torch.device(dev).type == "cuda"):
        torch.cuda.synchronize(dev)


def device_info(dev) -> dict:
    cuda = torch.device(dev).type == "cuda"
    return dict(gpu=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__)


def emit(res: dict, path: str | None):
    """Print one JSON line; also append it to `path` when given."""
    line = json.dumps(res)
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
