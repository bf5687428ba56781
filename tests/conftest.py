import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MAGI_SHARED", ROOT.parent / "shared" / "magi1"))


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on the GPU machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if not os.environ.get("COMFYUI_PATH"):
        skip = pytest.mark.skip(reason="set COMFYUI_PATH to a ComfyUI checkout to run the comfyui tests")
        for item in items:
            if "comfyui" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def shared_file():
    def get(name):
        p = SHARED / name
        if not p.exists():
            pytest.skip(f"{p} not present (reference data files live in ../shared/magi1)")
        return p

    return get
