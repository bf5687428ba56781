"""Per-GPU memory of a generation, one GPU or context parallel: COMPUTED from arithmetic, calibrated on two runs.

need(cp) = weights on the GPU (full replica on every rank; with fp8 storage the block linears take 1 byte per
           weight; with block swap only the resident layers plus the 2 streamed ones in flight)
         + activations of the largest DiT forward (the window plus the extra clean chunk: 5 chunks of
           6·(H/16)·(W/16) tokens) split over cp ranks, +10% for the all-to-all buffers when cp > 1
         + KV cache (1 clean chunk at steady state, bf16, the rank's KV heads)
         + 2 GiB CUDA context / NCCL / allocator slack.
Activation bytes per token per hidden unit, measured at cp = 1 on an H100 (bench/results-*.jsonl): 4.5B 22.2
(window forward), 24B (GLU) 25.6 (the whole P5 generation at 720x1280, row-blocked SwiGLU); fp8 layers add
6·ffn B for the fp32 quantization temporaries. A card "fits" when need <= 95% of its memory. T5 and the VAE
stay in ComfyUI's process, not counted.

`python -m magi_core.parallel.memory` prints the table (GiB per GPU; marks: cards of 24 / 48 / 80 GB that fit).
"fp8 storage" = the loader's weight_dtype fp8_e4m3fn; "swap N" = block_swap N layers streamed from host memory.

| model | size | cp=1 | cp=2 | cp=4 | cp=8 |
|---|---|---|---|---|---|
| 4.5B (bf16) | 720x720 | 15.8 (24,48,80) | 13.3 (24,48,80) | 11.8 (24,48,80) | 11.1 (24,48,80) |
| 4.5B (bf16) | 720x1280 | 20.0 (24,48,80) | 15.5 (24,48,80) | 12.9 (24,48,80) | 11.6 (24,48,80) |
| 4.5B-distill fp8 storage | 720x720 | 11.8 (24,48,80) | 9.3 (24,48,80) | 7.8 (24,48,80) | 7.1 (24,48,80) |
| 4.5B-distill fp8 storage | 720x1280 | 16.0 (24,48,80) | 11.5 (24,48,80) | 9.0 (24,48,80) | 7.7 (24,48,80) |
| 24B (bf16) | 720x720 | 57.7 (80) | 52.6 (80) | 49.6 (80) | 48.1 (80) |
| 24B (bf16) | 720x1280 | 66.4 (80) | 57.3 (80) | 51.9 (80) | 49.3 (80) |
| 24B-distill fp8 storage | 720x720 | 36.4 (48,80) | 31.2 (48,80) | 28.2 (48,80) | 26.7 (48,80) |
| 24B-distill fp8 storage | 720x1280 | 45.0 (80) | 35.9 (48,80) | 30.6 (48,80) | 27.9 (48,80) |
| 24B-distill fp8 storage, swap 24 | 720x720 | 25.8 (48,80) | 20.7 (24,48,80) | 17.7 (24,48,80) | 16.1 (24,48,80) |
| 24B-distill fp8 storage, swap 24 | 720x1280 | 34.4 (48,80) | 25.3 (48,80) | 20.0 (24,48,80) | 17.3 (24,48,80) |
| 24B-distill fp8 storage, swap 40 | 720x720 | 18.1 (24,48,80) | 13.0 (24,48,80) | 10.0 (24,48,80) | 8.5 (24,48,80) |
| 24B-distill fp8 storage, swap 40 | 720x1280 | 26.7 (48,80) | 17.6 (24,48,80) | 12.3 (24,48,80) | 9.6 (24,48,80) |
| 24B-distill-fp8, swap 24 | 720x720 | 32.1 (48,80) | 24.5 (48,80) | 20.0 (24,48,80) | 17.7 (24,48,80) |
| 24B-distill-fp8, swap 24 | 720x1280 | 45.1 (80) | 31.5 (48,80) | 23.5 (48,80) | 19.5 (24,48,80) |

Full replicas of 24B never fit a 24 GB card (fp8 weights alone are 23 GiB), but with fp8 storage and block swap
only the resident layers count: at cp = 4 on 4 x 24 GB cards (720x1280) 26 of the 48 layers stay on each GPU,
the other 22 stream from host memory (about 0.5 GB per layer per forward over PCIe, hidden behind the layer's
compute at these sizes). 4.5B fits 24 GB cards on one GPU. kv_offload moves the KV cache to host memory.
"""
from __future__ import annotations

import math

from ..config import preset

GIB = 2**30
ACT_PER_HIDDEN = {False: 22.2, True: 25.6}  # bytes per token per hidden unit (non-GLU 4.5B, GLU 24B), measured
FP8_EXTRA_PER_FFN = 6.0
OVERHEAD_GIB = 2.0
CARDS_GB = (24, 48, 80)


def weights_gib(cfg, weight_fp8: bool = False, block_swap: int = 0) -> float:
    """Weights on the GPU: everything, or with block swap the resident layers plus 2 streamed ones."""
    from ..checkpoint import expected_params

    from ..dit.weight_fp8 import TARGETS

    targets = tuple(f"{t}.weight" for t in TARGETS)
    total = layers = 0.0
    for name, (shape, dtype) in expected_params(cfg).items():
        size = math.prod(shape)
        fp8 = weight_fp8 and name.startswith("videodit_blocks.layers.") and name.endswith(targets)
        b = size + 4 * shape[0] if fp8 else size * dtype.itemsize  # fp8 values + one fp32 scale per row
        total += b
        layers += b if name.startswith("videodit_blocks.layers.") else 0
    per_layer = layers / cfg.num_layers
    streamed = min(block_swap, 2) if block_swap else 0
    return (total - per_layer * (block_swap - streamed)) / GIB


def need_gib(name: str, height: int, width: int, cp: int, chunks_per_forward: int = 5, weight_fp8: bool = False,
             block_swap: int = 0) -> float:
    """Estimated peak GiB on each of cp GPUs for the preset `name` at height x width."""
    cfg = preset(name)
    return weights_gib(cfg, weight_fp8, block_swap) + run_bytes(cfg, height, width, cp, chunks_per_forward) / GIB \
        + OVERHEAD_GIB


def run_bytes(cfg, height: int, width: int, cp: int = 1, chunks_per_forward: int = 5) -> float:
    """Bytes each rank needs besides the weights: activations of the largest DiT forward and the KV cache."""
    ctn = 6 * (height // 16) * (width // 16)
    per_token = cfg.hidden_size * ACT_PER_HIDDEN[cfg.gated_linear_unit]
    if cfg.fp8_quant:
        per_token += FP8_EXTRA_PER_FFN * cfg.ffn_hidden_size
    act = per_token * chunks_per_forward * ctn / cp * (1.1 if cp > 1 else 1.0)
    from .ulysses import kv_repeat

    kv_heads = cfg.num_query_groups * kv_repeat(cfg.num_query_groups, cp) // cp  # KV heads held by each rank
    kv = cfg.num_layers * ctn * kv_heads * 2 * cfg.kv_channels * 2
    return act + kv


def max_resident_layers(name: str, height: int, width: int, cp: int, card_gb: float, weight_fp8: bool = True) -> int:
    """Most transformer layers that can stay on a card of card_gb GB (-1: not even with every layer streamed)."""
    cfg = preset(name)
    for swap in range(cfg.num_layers + 1):
        if need_gib(name, height, width, cp, weight_fp8=weight_fp8, block_swap=swap) <= 0.95 * card_gb * 1e9 / GIB:
            return cfg.num_layers - swap
    return -1


def fits(gib: float) -> list[int]:
    return [c for c in CARDS_GB if gib <= 0.95 * c * 1e9 / GIB]


ROWS = (("4.5B", {}), ("4.5B-distill", {"weight_fp8": True}), ("24B", {}), ("24B-distill", {"weight_fp8": True}),
        ("24B-distill", {"weight_fp8": True, "block_swap": 24}), ("24B-distill", {"weight_fp8": True, "block_swap": 40}),
        ("24B-distill-fp8", {"block_swap": 24}))


def table(rows=ROWS, sizes=((720, 720), (720, 1280)), cps=(1, 2, 4, 8)) -> str:
    out = ["| model | size | " + " | ".join(f"cp={c}" for c in cps) + " |", "|---|---|" + "---|" * len(cps)]
    for m, opts in rows:
        for h, w in sizes:
            cells = []
            for c in cps:
                g = need_gib(m, h, w, c, **opts)
                ok = fits(g)
                cells.append(f"{g:.1f}" + (f" ({','.join(map(str, ok))})" if ok else ""))
            label = m + (" fp8 storage" if opts.get("weight_fp8") else "" if "fp8" in m else " (bf16)")
            label += f", swap {opts['block_swap']}" if opts.get("block_swap") else ""
            out.append(f"| {label} | {h}x{w} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table())
