"""Shared bits of the benchmark scripts: device sync, result output, the steady-state window inputs."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch


def sync(dev=None):
    if torch.cuda.is_available() and (dev is None or torch.device(dev).type == "cuda"):
        torch.cuda.synchronize(dev)


def model_args(ap, variant: str = "base"):
    """The model and shape options every single-GPU benchmark takes."""
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--variant", default=variant, choices=["base", "distill", "distill-fp8"])
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--precision", default="fast", choices=["fast", "exact"])
    ap.add_argument("--backend", default=None, help="attention backend (default auto)")
    ap.add_argument("--unfused", action="store_true",
                    help="without session 10's fusions: pre-norms, the cross-attention query norm and the fp8 "
                         "quantizations as passes of their own, fc1 and GELU as two (magi_core/dit/layer.py FUSIONS, "
                         "GELU_EPILOGUE)")


def runtime(a, dev):
    """The DiTRuntime of a benchmark's options (compile, block swap, fp8 storage where the script has them)."""
    from magi_core.dit import layer
    from magi_core.settings import DiTRuntime

    if getattr(a, "unfused", False):
        layer.FUSIONS = layer.GELU_EPILOGUE = False
    return DiTRuntime(device=str(dev), precision=getattr(a, "precision", "fast"), attention=a.backend,
                      compile=getattr(a, "compile", False), block_swap=getattr(a, "block_swap", 0),
                      weight_dtype="fp8_e4m3fn" if getattr(a, "weight_fp8", False) else None)


def random_dit(a, dev):
    """(name, cfg, model): the preset named by model_args' --size/--variant, and its DiT with random weights on `dev`,
    set up as runtime(a) says."""
    from magi_core.config import preset
    from magi_core.dit import build_dit, init_random_

    name = a.size if a.variant == "base" else f"{a.size}-{a.variant}"
    cfg = preset(name)
    return name, cfg, runtime(a, dev).apply(init_random_(build_dit(cfg), seed=0, device=dev))


def device_info(dev) -> dict:
    cuda = torch.device(dev).type == "cuda"
    return dict(gpu=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__)


def emit(res: dict, path: str | None):
    """Print one JSON line; also append it to `path` when given."""
    from magi_core.dit import layer

    line = json.dumps({**res, "fusions": layer.FUSIONS, "gelu_epilogue": layer.GELU_EPILOGUE})
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@dataclass
class Window:
    """One steady-state DiT window at full size (random latents and captions)."""

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    kv: list
    slice_point: int
    keys: list  # key chunks seen by each query chunk (FLOP model)
    ctn: int  # tokens per chunk
    gen: torch.Generator

    @property
    def args(self):
        return self.x, self.t, self.y, self.mask, self.kv

    def prefill(self, model, dt_factor):
        """mode 'cached': a fresh KV cache holding the clean chunk that the window reads."""
        from magi_core.dit import KVCache

        cache = KVCache(max_chunks=1)
        H, W = self.x.shape[-2:]
        g = torch.Generator(self.x.device).manual_seed(7)  # the same clean chunk every time (runs compare)
        x0 = torch.randn(1, 16, 6, H, W, device=self.x.device, generator=g)
        model(x0, self.t[:, :1] * 0 + 0.9999, self.y[:1], self.mask[:1], [(0, self.ctn)], cache=cache,
              cache_write_chunks=1, dt_factor=dt_factor)
        return cache


def window_inputs(cfg, height: int, width: int, dev, mode: str = "extra", cap_tokens: int = 100) -> Window:
    """mode 'extra': the extra clean chunk + 4 noisy chunks in the forward (K = 1..5 chunks; the reference's
    "steady window", 60,750 query tokens at 720x720). mode 'cached': 4 noisy chunks, the clean chunk read from the
    KV cache (K = 2..5; P1's shape; see Window.prefill)."""
    H, W = height // 8, width // 8
    ctn = 6 * (H // 2) * (W // 2)
    g = torch.Generator(device=dev).manual_seed(0)
    if mode == "extra":  # chunks c-4 (clean, written), c-3..c
        dn, slice_point, keys = 5, 0, [1, 2, 3, 4, 5]
        kv = [(0, ctn)] + [(0, (i + 1) * ctn) for i in range(1, 5)]
        t = torch.tensor([[0.9999, 0.3, 0.1, 0.0217, 0.0]], device=dev)
    else:  # chunk 0 cached; chunks 1..4 attend back to it
        dn, slice_point, keys = 4, 1, [2, 3, 4, 5]
        kv = [(0, (i + 2) * ctn) for i in range(4)]
        t = torch.tensor([[0.3, 0.1, 0.0217, 0.0]], device=dev)
    x = torch.randn(1, 16, 6 * dn, H, W, device=dev, generator=g)
    y = torch.randn(dn, cap_tokens, cfg.caption_channels, device=dev, generator=g) * 0.1
    mask = torch.ones(dn, cap_tokens, device=dev)
    return Window(x, t, y, mask, kv, slice_point, keys, ctn, g)
