"""MAGI-1 diffusion transformer."""
from .cache import KVCache
from .model import VideoDiT, build_dit, init_random_, promote_high_precision

__all__ = ["KVCache", "VideoDiT", "build_dit", "init_random_", "promote_high_precision"]
