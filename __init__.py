"""ComfyUI entry point of the MAGI-1 node pack.

ComfyUI imports this folder as a package. Tools that import this file alone, outside any package (pytest collecting
a clone whose folder name is no valid module name, such as `ComfyUI-MAGI-1`), get an empty module: there is no
`nodes` subpackage to reach then, and nothing here is needed outside ComfyUI.
"""
import importlib.util
import sys
from pathlib import Path

if __package__:
    _root = Path(__file__).resolve().parent
    if "magi_core" not in sys.modules:  # by path: never put this folder on sys.path (its `nodes` is ComfyUI's name)
        _spec = importlib.util.spec_from_file_location(
            "magi_core", _root / "magi_core" / "__init__.py", submodule_search_locations=[str(_root / "magi_core")])
        _mod = importlib.util.module_from_spec(_spec)
        sys.modules["magi_core"] = _mod
        _spec.loader.exec_module(_mod)

    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

    WEB_DIRECTORY = "./js"
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
