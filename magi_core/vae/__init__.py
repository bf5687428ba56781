"""MAGI-1 transformer VAE: network, tiled encode/decode, official-checkpoint loader
(official `inference/model/vae/`)."""
from .loader import find_vae, load_vae, read_vae_config, save_vae
from .model import VAE_PRESETS, VAEConfig, ViTVAE
from .tiling import SCALE_FACTOR, tiled_decode, tiled_encode

__all__ = ["VAEConfig", "VAE_PRESETS", "ViTVAE", "SCALE_FACTOR", "tiled_encode", "tiled_decode",
           "find_vae", "load_vae", "save_vae", "read_vae_config"]
