"""Run a sampling plan: DiT passes, CFG, Euler updates, KV cache; stream each finished chunk.

The plan (plan.py) decides everything about the schedule; this module only turns it into tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..dit import KVCache
from .plan import DiTCall, Plan, max_cached_chunks


class SamplingCancelled(Exception):
    """Raised between DiT calls when the cancel check returns True."""


@dataclass
class Caption:
    """One caption as the DiT sees it: its valid tokens only (special tokens already prepended)."""

    tokens: torch.Tensor  # (n_valid, Cc)


@dataclass
class FinishedChunk:
    index: int  # output chunk number (0 = first generated chunk)
    chunk: int  # absolute chunk index in the latent video
    latents: torch.Tensor  # (1, C, frames, h, w) fp32


SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def make_noise(shape, seed: int, device, per_chunk: bool = False, chunk_width: int = 6) -> torch.Tensor:
    """fp32 N(0,1) latent noise.

    Default = the reference: one randn over the whole latent right after seeding (on CUDA this reproduces the
    reference bit for bit; it changes when the video length changes). per_chunk=True: chunk c draws from seed
    (seed, c) (seed * 1_000_003 + c, modulo 2**64), so a chunk's noise does not depend on how long the video is.
    """
    device = torch.device(device)
    if not per_chunk:
        gen = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    B, C, T, H, W = shape
    parts = []
    for c in range((T + chunk_width - 1) // chunk_width):
        gen = torch.Generator(device=device).manual_seed((seed * 1_000_003 + c) % SEED_LIMIT)
        parts.append(torch.randn((B, C, chunk_width, H, W), generator=gen, device=device, dtype=torch.float32))
    return torch.cat(parts, dim=2)[:, :, :T]


def _pack(captions: list[Caption], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> y (rows, Lmax, Cc) and mask (rows, Lmax)."""
    L = max(1, max(c.tokens.shape[0] for c in captions))
    C = captions[0].tokens.shape[1]
    y = torch.zeros(len(captions), L, C, device=device)
    mask = torch.zeros(len(captions), L, device=device)
    for i, c in enumerate(captions):
        n = c.tokens.shape[0]
        y[i, :n] = c.tokens.to(device=device, dtype=torch.float32)
        mask[i, :n] = 1
    return y, mask


def check_inputs(plan: Plan, text: list[Caption], noise: torch.Tensor, prefix: torch.Tensor | None = None):
    """The inputs of one generation fit its plan (shapes only: no tensor data is read)."""
    cw = plan.chunk_width
    if noise.shape[2] != plan.n_chunks * cw:
        raise ValueError(f"noise has {noise.shape[2]} latent frames, the plan needs {plan.n_chunks * cw}")
    if len(text) != plan.n_chunks:
        raise ValueError(f"need one caption per chunk ({plan.n_chunks}), got {len(text)}")
    if plan.prefix_latents and (prefix is None or prefix.shape[2] < plan.prefix_latents):
        raise ValueError(f"the plan needs {plan.prefix_latents} prefix latent frames")


def last_uses(plan: Plan) -> dict[int, int]:
    """chunk -> index of the last call that reads, writes or emits its latents."""
    cw, last = plan.chunk_width, {}
    for i, call in enumerate(plan.calls):
        for c in range(call.slice_point, call.slice_point + len(call.chunks)):
            last[c] = i
        if call.emit is not None:
            a, b = call.emit.frames
            for c in range(a // cw, (b - 1) // cw + 1):
                last[c] = i
    return last


class Executor:
    """Holds the state of one generation: latents, KV cache, captions.

    Only the chunks that calls still use have latents on the device (`xs`, chunk -> (1, C, cw, h, w)): a chunk's
    latents are made from its noise when a call first reads it and dropped after the last call that uses it, so
    device memory does not grow with the video's length. `noise` may live in host memory (`device`: where the
    model runs; default the noise's device)."""

    def __init__(self, model, plan: Plan, text: list[Caption], null: Caption, noise: torch.Tensor,
                 prefix: torch.Tensor | None = None, kv_offload: bool = False, prev_chunks_scale: float = 0.7,
                 device=None):
        check_inputs(plan, text, noise, prefix)
        cw = plan.chunk_width
        self.model, self.plan, self.text, self.null = model, plan, text, null
        self.noise, self.device = noise, torch.device(device) if device is not None else noise.device
        self.xs: dict[int, torch.Tensor] = {}
        self.last_use = last_uses(plan)
        self.prefix = None if prefix is None else prefix.to(self.device, torch.float32)
        self.cache = KVCache(max_chunks=max(1, max_cached_chunks(plan)), offload=kv_offload)
        self.prev_chunks_scale = prev_chunks_scale
        self.kept: dict[tuple[int, str], dict] = {}  # early first chunk: (g, pass) -> per-layer K/V of chunk c0
        _, _, _, h, w = noise.shape
        p, pt = model.cfg.patch_size, model.cfg.t_patch_size
        self.ctn = (cw // pt) * (h // p) * (w // p)

    def chunk(self, c: int) -> torch.Tensor:
        """Latents of chunk c on the device (its noise until a call integrates it)."""
        x = self.xs.get(c)
        if x is None:
            cw = self.plan.chunk_width
            x = self.xs[c] = self.noise[:, :, c * cw:(c + 1) * cw].to(self.device, torch.float32, copy=True)
        return x

    def frames(self, a: int, b: int) -> torch.Tensor:
        """A new tensor with latent frames a:b of the video."""
        cw = self.plan.chunk_width
        c0 = a // cw
        x = torch.cat([self.chunk(c) for c in range(c0, (b - 1) // cw + 1)], dim=2)
        return x[:, :, a - c0 * cw:b - c0 * cw]

    def release(self, i: int) -> None:
        """Drop the latents of chunks no call after call i uses."""
        for c in [c for c in self.xs if self.last_use.get(c, -1) <= i]:
            del self.xs[c]

    # one DiT pass over the chunks of a call
    def _dit(self, x, chunks, captions, kv_chunks, slice_point, uncond, call, write=0, name="text"):
        y, mask = _pack(captions, x.device)
        t = torch.tensor([[c.t for c in chunks]], dtype=torch.float32, device=x.device)
        kv = [(a * self.ctn, b * self.ctn) for a, b in kv_chunks]
        dt = call.dt_factor if self.model.cfg.distill else None
        key = (call.g, name)  # early first chunk (plan.early_first_chunk): K/V of chunk c0 kept per step and pass
        if call.kv_from is not None:
            self.cache.put(self.plan.chunk_offset, self.kept.pop(key))
        if call.kv_keep:
            self.cache.sink, write = {}, 1
        try:
            return self.model(x, t, y, mask, kv, slice_point=slice_point, uncond=uncond,
                              cache=self.cache, cache_write_chunks=write, dt_factor=dt)
        finally:
            if call.kv_keep:
                self.kept[key], self.cache.sink = self.cache.sink, None

    def _uncond(self, x, call: DiTCall):
        """cfg pass 3: every noisy chunk alone (its own batch element), null caption, no cache."""
        cw, noisy = self.plan.chunk_width, call.noisy
        n = len(noisy)
        xb = x[:, :, -n * cw:].reshape(1, x.shape[1], n, cw, *x.shape[3:]).transpose(0, 2)[:, :, 0]
        y, mask = _pack([self.null] * n, x.device)
        t = torch.tensor([[c.t] for c in noisy], dtype=torch.float32, device=x.device)
        kv = [(b * self.ctn, (b + 1) * self.ctn) for b in range(n)]
        dt = call.dt_factor if self.model.cfg.distill else None
        out = self.model(xb, t, y, mask, kv, uncond=True, dt_factor=dt)
        return out.transpose(0, 1).reshape(1, x.shape[1], n * cw, *x.shape[3:])

    def step(self, call: DiTCall, cancel: Callable[[], bool] | None = None):
        """Execute one DiT call and the Euler updates of its noisy chunks."""
        x = self._input(call)
        v = self._velocity(call, x, cancel)
        if v is not None:
            self._integrate(call, x, v)

    def _input(self, call: DiTCall) -> torch.Tensor:
        """The forward's latents (1, C, R*cw, h, w), prefix frames overwritten."""
        cw, sp = self.plan.chunk_width, call.slice_point
        x = self.frames(sp * cw, (sp + len(call.chunks)) * cw)
        if call.prefix_frames:
            a, b = call.prefix_frames
            x[:, :, a - sp * cw:b - sp * cw] = self.prefix[:, :, a:b]
        return x

    def _velocity(self, call: DiTCall, x, cancel) -> torch.Tensor | None:
        """The velocity of the call's noisy chunks (1, C, n*cw, h, w), or None for the prefix extraction."""
        plan, cw, sp = self.plan, self.plan.chunk_width, call.slice_point
        R = len(call.chunks)
        text_rows = [self.null if c.clean else self.text[c.index] for c in call.chunks]
        kv = [c.kv_range for c in call.chunks]
        writes = len(call.cache_writes)

        def check():
            if cancel is not None and cancel():
                raise SamplingCancelled()

        if call.extract_prefix:  # whole prefix chunks; only the cache-writing pass matters (output discarded)
            uncond = plan.cache_pass == "cond_pre"
            x = self.prefix[:, :, sp * cw:(sp + R) * cw]
            self._dit(x, call.chunks, [self.null] * R, kv, sp, uncond, call, write=writes)
            return None
        n = len(call.noisy)
        if plan.cfg_number == 3:
            out_text = self._dit(x, call.chunks, text_rows, kv, sp, False, call)
            check()
            out_pre = self._dit(x, call.chunks, [self.null] * R, kv, sp, True, call, write=writes, name="pre")
            check()
            out_unc = self._uncond(x, call)
            out_text, out_pre = out_text[:, :, -n * cw:], out_pre[:, :, -n * cw:]
            vs = []
            for i, c in enumerate(call.noisy):
                p, s = (torch.tensor(v, dtype=torch.float32) for v in c.cfg)
                sl = slice(i * cw, (i + 1) * cw)
                vs.append((1 - p) * out_unc[:, :, sl] + (p - s) * out_pre[:, :, sl] + s * out_text[:, :, sl])
            return torch.cat(vs, dim=2)
        # cfg_number 1 (distill / fp8): one pass; nearly-clean chunk gets an isolated text-only copy
        chunks, rows, x_in = list(call.chunks), text_rows, x
        if call.distill_copy is not None:
            first = R - n  # position of the first noisy chunk in the forward
            chunks = chunks + [call.distill_copy]
            rows = rows + [self.text[call.distill_copy.index]]
            kv = kv + [call.distill_copy.kv_range]
            x_in = torch.cat([x, x[:, :, first * cw:(first + 1) * cw]], dim=2)
        out = self._dit(x_in, chunks, rows, kv, sp, False, call, write=writes)
        if call.distill_copy is not None:
            a = self.prev_chunks_scale
            o_ctx = out[:, :, first * cw:(first + 1) * cw]
            o_iso = out[:, :, R * cw:]
            out = out[:, :, :R * cw].clone()
            out[:, :, first * cw:(first + 1) * cw] = o_ctx * a + o_iso * (1 - a)
        return out[:, :, -n * cw:]

    def _integrate(self, call: DiTCall, x: torch.Tensor, v: torch.Tensor):
        """Euler per noisy chunk on the (prefix-overwritten) input: x <- x + v * dt."""
        cw = self.plan.chunk_width
        R, n = len(call.chunks), len(call.noisy)
        base = (R - n) * cw
        for i, c in enumerate(call.noisy):
            xi = x[:, :, base + i * cw: base + (i + 1) * cw]
            self.xs[c.index] = xi + v[:, :, i * cw:(i + 1) * cw] * c.dt


def generate_chunks(model, plan: Plan, text: list[Caption], null: Caption, noise: torch.Tensor,
                    prefix: torch.Tensor | None = None, kv_offload: bool = False, prev_chunks_scale: float = 0.7,
                    progress: Callable[[int, int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None, device=None) -> Iterator[FinishedChunk]:
    """Yield each finished chunk's latents as soon as it is done.

    progress(call_index, total_calls, newest_chunk) after every DiT call; cancel() checked between DiT passes.
    noise may be in host memory, `device` is where the model runs (default: the noise's device).
    """
    ex = Executor(model, plan, text, null, noise, prefix, kv_offload, prev_chunks_scale, device)
    total = len(plan.calls)
    for i, call in enumerate(plan.calls):
        if cancel is not None and cancel():
            raise SamplingCancelled()
        ex.step(call, cancel)
        if progress is not None:
            progress(i + 1, total, call.chunk_end - 1)
        if call.emit is not None:
            a, b = call.emit.frames
            yield FinishedChunk(call.emit.index, call.emit.chunk, ex.frames(a, b))
        ex.release(i)
    ex.cache.clear()
    ex.kept.clear()
