"""`magi_core.kernels`: the repo's top-level `kernels/` folder (attention backends, fp8 GEMMs, fused ops).

The project layout keeps those modules in `kernels/` at the repo root, but `kernels` is also a PyPI package that
transformers 5 imports. So `kernels/` has no `__init__.py`: it is never a regular package of that name, and a
real `kernels` package installed anywhere on sys.path always wins over it (PEP 420), whatever the working
directory. Our code reaches those modules only through this package, whose search path is that folder.
"""
from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[1] / "kernels")]
