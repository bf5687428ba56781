"""Bounded KV cache for clean chunks (official `inference/model/dit/dit_module.py`, the attention's KV memory).

Per layer and per clean chunk it keeps `[K | V]` as (tokens, g, 2d): K after k_layernorm and RoPE, V raw.
Chunks are addressed by their absolute index in the video. Only the last `max_chunks` chunks are kept,
so memory is constant in video length (the reference keeps the whole video).
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, max_chunks: int | None = None, offload: bool = False):
        self.max_chunks = max_chunks
        self.offload = offload
        self._store: dict[int, dict[int, torch.Tensor]] = {}  # layer -> chunk -> (ctn, g, 2d)
        self.sink: dict[int, torch.Tensor] | None = None  # when set, writes land here (layer -> kv), not in the cache

    def chunks(self, layer: int = 0) -> list[int]:
        return sorted(self._store.get(layer, {}))

    def first_chunk(self) -> int | None:
        present = [c for layer in self._store.values() for c in layer]
        return min(present) if present else None

    def read(self, layer: int, start: int, end: int) -> torch.Tensor | None:
        """`[K|V]` of chunks start..end-1 concatenated along tokens (where they are stored), or None if start == end.
        The layers read with read_before; this shows what the cache holds."""
        if end <= start:
            return None
        parts = self._parts(layer, start, end)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def read_before(self, layer: int, start: int, end: int, k: torch.Tensor, v: torch.Tensor):
        """(K, V): the cached K and V of chunks start..end-1 followed by k and v (tokens, g, d), each made by one
        concatenation straight from the stored chunks (`read` then splitting its `[K|V]` would copy them twice).
        Chunks on another device than k (offload) move over first, one by one."""
        if end <= start:
            return k, v
        d = k.shape[-1]
        # moved first, in stream order: an offloaded chunk's copy to pinned host memory was queued without a
        # wait (_own)
        parts = [p.to(k.device, non_blocking=True) for p in self._parts(layer, start, end)]
        return torch.cat([p[..., :d] for p in parts] + [k], 0), torch.cat([p[..., d:] for p in parts] + [v], 0)

    def _parts(self, layer: int, start: int, end: int) -> list[torch.Tensor]:
        store = self._store.get(layer, {})
        missing = [c for c in range(start, end) if c not in store]
        if missing:
            raise RuntimeError(
                f"KV cache has no entry for chunks {missing} (layer {layer}); kept: {sorted(store)}. "
                "The key range reaches chunks that were never cached or were evicted (raise max_chunks)."
            )
        return [store[c] for c in range(start, end)]

    def write(self, layer: int, first_chunk: int, kv: torch.Tensor, tokens_per_chunk: int, fresh: bool = False):
        """Store kv (n * tokens_per_chunk, g, 2d) as chunks first_chunk .. first_chunk + n - 1. fresh: kv is a new
        tensor that nobody else holds (the caller's concatenation), so one chunk is kept as it is, not copied."""
        if kv.shape[0] % tokens_per_chunk:
            raise ValueError("KV cache writes must cover whole chunks")
        if self.sink is not None:
            self.sink[layer] = self._own(kv, fresh)
            return
        store = self._store.setdefault(layer, {})
        parts = kv.split(tokens_per_chunk, dim=0)
        for i, part in enumerate(parts):
            store[first_chunk + i] = self._own(part, fresh and len(parts) == 1)
        self._evict(store)

    def put(self, chunk: int, per_layer: dict[int, torch.Tensor]):
        """Store one chunk's `[K|V]` for every layer (as captured by `sink`). No eviction: this extra entry sits
        beside the clean chunks the same forward still reads; the next `write` trims the cache again."""
        for layer, kv in per_layer.items():
            self._store.setdefault(layer, {})[chunk] = kv

    def _own(self, kv: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """A private copy: pinned host memory when offloading CUDA tensors, else a clone on kv's device (or kv
        itself when it is fresh: all of a tensor nobody else holds)."""
        kv = kv.detach()
        if self.offload and kv.is_cuda:
            host = torch.empty(kv.shape, dtype=kv.dtype, pin_memory=True)
            host.copy_(kv, non_blocking=True)
            return host
        return kv if fresh else kv.clone()

    def _evict(self, store: dict):
        if self.max_chunks is not None:
            for c in sorted(store)[: max(0, len(store) - self.max_chunks)]:
                del store[c]

    def evict_before(self, chunk: int):
        for store in self._store.values():
            for c in [c for c in store if c < chunk]:
                del store[c]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._store.values() for t in s.values())

    def clear(self):
        self._store.clear()
