"""Pure-PyTorch MAGI-1 (DiT, VAE, text path, sampler). Never imports ComfyUI."""
__version__ = "0.1.0"
