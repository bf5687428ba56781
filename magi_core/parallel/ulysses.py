"""Ulysses context parallel for the VideoDiT
(official `inference/infra/parallelism/context_parallel.py`), on torch.distributed.

The flattened token sequence (batch-major, N*S tokens) is cut into cp contiguous pieces, the first
(N*S) % cp ranks holding one extra token. Everything per token (norms, projections, RoPE, gates, MLP,
cross-attention) runs on the local piece. Self-attention needs the whole sequence, so per layer:

  [K|V] and Q: all-to-all seq -> heads   (L_r, H, e) -> (N*S, H/cp, e), heads split contiguously
  KV cache + block-causal attention on the full sequence with the local heads (unchanged code)
  output:      all-to-all heads -> seq   (N*S, nh/cp, d) -> (L_r, nh, d), global head order

KV heads: g KV groups are repeated `cp / gcd(g, cp)` times (repeat_interleave) before the split, so any cp
that divides the query heads works: cp | g needs no copies, cp > g with g | cp gives one KV head per rank
(the reference's rule), and e.g. 24 heads / 8 groups with cp = 3 replicates to 24 KV heads (8 per rank).
After the last layer the final_linear output is all-gathered, so every rank returns the full velocity and
the sampling loop runs unchanged (and identically) on every rank.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist


def split_sizes(n: int, cp: int) -> list[int]:
    """Tokens per rank: n // cp each, the first n % cp ranks one more (the reference's split)."""
    return [n // cp + (1 if r < n % cp else 0) for r in range(cp)]


def kv_repeat(num_query_groups: int, cp: int) -> int:
    """How many times each KV head is repeated so that the heads split evenly and match their queries."""
    return cp // math.gcd(num_query_groups, cp)


def check_cp_size(cfg, cp: int):
    """Raise a clear error when `cp` cannot split this model's heads."""
    nh = cfg.num_attention_heads
    if cp < 1 or nh % cp:
        ok = [c for c in range(1, nh + 1) if nh % c == 0]
        raise ValueError(f"context-parallel size {cp} must divide the model's {nh} query heads; "
                         f"use one of {ok} GPUs")


class ContextParallel:
    """A CP process group attached to one VideoDiT replica (`enable_context_parallel`)."""

    def __init__(self, cfg, group=None):
        self.group = group if group is not None else dist.group.WORLD
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        check_cp_size(cfg, self.size)
        self.repeat = kv_repeat(cfg.num_query_groups, self.size)

    def shard(self, hs: torch.Tensor, m):
        """Full (N, S, h) hidden states + ForwardMeta -> this rank's (1, L_r, h) tokens and a local meta."""
        N, S, h = hs.shape
        sizes = split_sizes(N * S, self.size)
        if min(sizes) == 0:
            raise ValueError(f"{N * S} tokens cannot be split over {self.size} ranks (each needs one)")
        lo = sum(sizes[: self.rank])
        hi = lo + sizes[self.rank]
        dev = hs.device
        pos = torch.arange(lo, hi, device=dev)
        xq, xk = [], []
        for (a, b), kr in zip(m.xq_ranges, m.xk_ranges):  # chunk query segments intersected with [lo, hi)
            s, e = max(a, lo), min(b, hi)
            if s < e:
                xq.append((s - lo, e - lo))
                xk.append(kr)
        shard = Shard(self, sizes, lo, hi, rows=pos // m.tokens_per_chunk)
        local = dataclasses.replace(m, rope=m.rope[pos % S], xq_ranges=xq, xk_ranges=xk, cp=shard)
        return hs.reshape(N * S, h)[lo:hi][None], local


@dataclasses.dataclass
class Shard:
    """One forward's split: ForwardMeta.cp. Moves tensors between the token and the head layout."""

    cp: ContextParallel
    sizes: list  # tokens per rank
    lo: int  # this rank's tokens are [lo, hi) of the flattened N*S sequence
    hi: int
    rows: torch.Tensor  # (L_r,) (batch, chunk) row of each local token, for the per-chunk gates

    def per_token(self, gate: torch.Tensor) -> torch.Tensor:
        """(N, dn, X) per-chunk values -> (1, L_r, X), one row per local token."""
        return gate.reshape(-1, gate.shape[-1])[self.rows][None]

    def to_heads(self, q, k, v):
        """q (L_r, nh, d), k/v (L_r, g, d) -> full-sequence q (N*S, nh/cp, d), k/v (N*S, g*rep/cp, d)."""
        d = k.shape[-1]
        kv = torch.cat([k, v], dim=-1)
        if self.cp.repeat > 1:
            kv = kv.repeat_interleave(self.cp.repeat, dim=1)
        kv = self._seq_to_heads(kv)
        return self._seq_to_heads(q), kv[..., :d].contiguous(), kv[..., d:].contiguous()

    def to_seq(self, x):
        """(N*S, H/cp, e) local heads -> (L_r, H, e) local tokens, heads in global order."""
        cp, L = self.cp.size, self.hi - self.lo
        x = x.contiguous()
        out = x.new_empty(cp * L, *x.shape[1:])
        dist.all_to_all_single(out, x, output_split_sizes=[L] * cp, input_split_sizes=self.sizes,
                               group=self.cp.group)
        return out.view(cp, L, *x.shape[1:]).transpose(0, 1).reshape(L, -1, x.shape[-1])

    def _seq_to_heads(self, x):
        cp, L, H, e = self.cp.size, x.shape[0], x.shape[1], x.shape[2]
        send = x.reshape(L, cp, H // cp, e).transpose(0, 1).contiguous()  # block j goes to rank j
        out = x.new_empty(sum(self.sizes), H // cp, e)
        dist.all_to_all_single(out, send.view(cp * L, H // cp, e), output_split_sizes=self.sizes,
                               input_split_sizes=[L] * cp, group=self.cp.group)
        return out

    def gather(self, out: torch.Tensor, N: int, S: int) -> torch.Tensor:
        """(1, L_r, D) -> (N, S, D) on every rank (all-gather; pieces padded to equal length)."""
        x = out[0]
        n = max(self.sizes)
        if x.shape[0] < n:
            x = torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])
        parts = [torch.empty_like(x) for _ in self.sizes]
        dist.all_gather(parts, x.contiguous(), group=self.cp.group)
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes)]).view(N, S, -1)


def enable_context_parallel(model, group=None) -> ContextParallel | None:
    """Attach the process group (default: the world) to a VideoDiT; a group of one rank detaches (returns None)."""
    group = group if group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        model.cp = None
        return None
    model.cp = ContextParallel(model.cfg, group)
    return model.cp
