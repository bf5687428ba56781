"""Range attention: query range i attends (full, non-causal) to key range i.

One function serves MAGI-1's block-causal self-attention (chunk i -> kv_range i) and its varlen
cross-attention (chunk i -> chunk i's valid caption tokens). GQA: query head j uses KV head j // (nh/g).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Ranges = "list[tuple[int, int]]"


def _as_pairs(ranges) -> list[tuple[int, int]]:
    if isinstance(ranges, torch.Tensor):
        ranges = ranges.tolist()
    return [(int(a), int(b)) for a, b in ranges]


def sdpa_range_attention(q, k, v, q_ranges, k_ranges, scale=None):
    """Reference backend: one torch SDPA call per range, no masks.

    GQA without repeating K/V: the hpg query heads that share a KV head are folded into the query length,
    (Lq, g*hpg, d) -> (g, hpg*Lq, d), so each SDPA call sees g heads on both sides (flash kernels apply).
    """
    out = torch.zeros_like(q)
    nh, g, d = q.shape[1], k.shape[1], q.shape[2]
    hpg = nh // g
    for (qs, qe), (ks, ke) in zip(_as_pairs(q_ranges), _as_pairs(k_ranges)):
        if qe <= qs or ke <= ks:
            continue  # no keys: zeros (cross-attention of chunks without caption tokens)
        L = qe - qs
        qi = q[qs:qe].view(L, g, hpg, d).permute(1, 2, 0, 3).reshape(g, hpg * L, d)
        ki = k[ks:ke].transpose(0, 1)
        vi = v[ks:ke].transpose(0, 1)
        o = F.scaled_dot_product_attention(qi[None], ki[None], vi[None], scale=scale)[0]
        out[qs:qe] = o.view(g, hpg, L, d).permute(2, 0, 1, 3).reshape(L, nh, d)
    return out


def range_attention(q, k, v, q_ranges, k_ranges, backend: str | None = None, scale=None):
    """q (Sq, nh, d), k/v (Sk, g, d) -> (Sq, nh, d); q_ranges/k_ranges: (n, 2) [start, end) pairs."""
    return sdpa_range_attention(q, k, v, q_ranges, k_ranges, scale=scale)
