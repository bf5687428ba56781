"""ComfyUI entry point of the MAGI-1 node pack."""
import importlib.util
import sys
from pathlib import Path

_root = Path(__file__).resolve().parent
if "magi_core" not in sys.modules:  # load by path: never put this folder on sys.path (it holds `nodes`/`kernels`)
    _spec = importlib.util.spec_from_file_location(
        "magi_core", _root / "magi_core" / "__init__.py", submodule_search_locations=[str(_root / "magi_core")])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["magi_core"] = _mod
    _spec.loader.exec_module(_mod)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./js"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
