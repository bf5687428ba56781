"""Per-GPU memory of a context-parallel generation: COMPUTED from arithmetic, not measured on these setups.

need(cp) = weights (full replica on every rank, from the checkpoint's parameter table)
         + activations of the largest DiT forward (the window plus the extra clean chunk: 5 chunks of
           6·(H/16)·(W/16) tokens) split over cp ranks, +10% for the all-to-all buffers when cp > 1
         + KV cache (1 clean chunk at steady state, bf16, the rank's KV heads)
         + 2 GiB CUDA context / NCCL / allocator slack.
Activation bytes per token come from one measurement each (bench/results-*.jsonl, cp = 1 window forward on
H100: 4.5B 22.2·h B, 24B (GLU) 59.5·h B; fp8 layers add 6·ffn B for the fp32 quantization temporaries).
A card "fits" when need <= 95% of its memory. T5 and the VAE stay in ComfyUI's process, not counted.

`python -m magi_core.parallel.memory` prints the table (GiB per GPU; marks: cards of 24 / 48 / 80 GB that fit):

| model | size | cp=1 | cp=2 | cp=4 | cp=8 |
|---|---|---|---|---|---|
| 4.5B (bf16) | 720x720 | 15.8 (24,48,80) | 13.3 (24,48,80) | 11.8 (24,48,80) | 11.1 (24,48,80) |
| 4.5B (bf16) | 720x1280 | 20.0 (24,48,80) | 15.5 (24,48,80) | 12.9 (24,48,80) | 11.6 (24,48,80) |
| 4.5B-distill-fp8 | 720x720 | 16.4 (24,48,80) | 12.0 (24,48,80) | 9.4 (24,48,80) | 8.1 (24,48,80) |
| 4.5B-distill-fp8 | 720x1280 | 23.9 (48,80) | 16.0 (24,48,80) | 11.4 (24,48,80) | 9.1 (24,48,80) |
| 24B (bf16) | 720x720 | 69.5 (80) | 59.1 (80) | 52.8 (80) | 49.7 (80) |
| 24B (bf16) | 720x1280 | 87.3 | 68.8 (80) | 57.7 (80) | 52.1 (80) |
| 24B-distill-fp8 | 720x720 | 55.1 (80) | 42.2 (48,80) | 34.4 (48,80) | 30.5 (48,80) |
| 24B-distill-fp8 | 720x1280 | 77.3 | 54.3 (80) | 40.5 (48,80) | 33.6 (48,80) |

So with full replicas the 24B model never fits a 24 GB card (its fp8 weights alone are 24.7 GiB): 4 x 24 GB
needs the weights split too (the reference's 24B 4090 recipe is pipeline parallel pp=2 x cp=4 on 8 cards),
or layer offload; neither is implemented here. 24B fp8 fits 48 GB cards from cp=2 at 720x720 and cp=4 at
720x1280; 24B bf16 needs 80 GB cards (cp >= 2 at 720x1280). kv_offload moves the KV cache to host memory.
"""
from __future__ import annotations

import math

from ..config import preset

GIB = 2**30
ACT_PER_HIDDEN = {False: 22.2, True: 59.5}  # bytes per token per hidden unit (non-GLU 4.5B, GLU 24B), measured
FP8_EXTRA_PER_FFN = 6.0
OVERHEAD_GIB = 2.0
CARDS_GB = (24, 48, 80)


def weights_gib(cfg) -> float:
    from ..checkpoint import expected_params

    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in expected_params(cfg).values()) / GIB


def need_gib(name: str, height: int, width: int, cp: int, chunks_per_forward: int = 5) -> float:
    """Estimated peak GiB on each of cp GPUs for the preset `name` at height x width."""
    cfg = preset(name)
    ctn = 6 * (height // 16) * (width // 16)
    per_token = cfg.hidden_size * ACT_PER_HIDDEN[cfg.gated_linear_unit]
    if cfg.fp8_quant:
        per_token += FP8_EXTRA_PER_FFN * cfg.ffn_hidden_size
    act = per_token * chunks_per_forward * ctn / cp * (1.1 if cp > 1 else 1.0)
    kv_heads = max(1, cfg.num_query_groups // cp)
    kv = cfg.num_layers * ctn * kv_heads * 2 * cfg.kv_channels * 2
    return weights_gib(cfg) + (act + kv) / GIB + OVERHEAD_GIB


def fits(gib: float) -> list[int]:
    return [c for c in CARDS_GB if gib <= 0.95 * c * 1e9 / GIB]


def table(models=("4.5B", "4.5B-distill-fp8", "24B", "24B-distill-fp8"), sizes=((720, 720), (720, 1280)),
          cps=(1, 2, 4, 8)) -> str:
    rows = ["| model | size | " + " | ".join(f"cp={c}" for c in cps) + " |", "|---|---|" + "---|" * len(cps)]
    for m in models:
        for h, w in sizes:
            cells = []
            for c in cps:
                g = need_gib(m, h, w, c)
                ok = fits(g)
                cells.append(f"{g:.1f}" + (f" ({','.join(map(str, ok))})" if ok else ""))
            label = m if "-" in m else f"{m} (bf16)"
            rows.append(f"| {label} | {h}x{w} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
