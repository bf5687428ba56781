"""Pure-PyTorch MAGI-1 (DiT, VAE, text path, sampler). Never imports ComfyUI."""
from . import _kernels  # noqa: F401  registers the repo's kernels/ as `magi1_kernels`

__version__ = "0.1.0"
