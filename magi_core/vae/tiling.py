"""Tiled VAE encode/decode with linear-ramp blending
(official `inference/infra/parallelism/tile_parallel.py`), one tile at a time.

Latents in and out of this module are DiT-space: `tiled_encode` returns mean * scale_factor and
`tiled_decode` divides by scale_factor first, exactly where the reference pipeline applies 0.18215.

Reference parity: tiles of `tile_size` px (0.25 overlap -> stride 192 px, blend 8 latent / 64 px) and
`fps // 2` frames (3 latents) with no temporal overlap. Encode blends in place, so later tiles blend with
already-blended neighbours (eager per-op rounding); decode blends a copy with the raw neighbours (one
rounding, like the reference's torch.compile'd blend). `temporal_overlap > 0` (decode only, not in the
reference) overlaps temporal tiles by that many latent frames and ramps between them, removing the hard
seam every `fps // 2` frames (and blends in place, see tiled_decode).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .model import ViTVAE

SCALE_FACTOR = 0.18215


@dataclass(frozen=True)
class AxisTile:
    start: int  # input units
    size: int  # input units
    offset: int  # output units: where the kept part goes
    keep: int  # output units kept (the rest is only used for blending the next tile)


@dataclass(frozen=True)
class AxisPlan:
    tiles: list[AxisTile]
    extent: int  # blend extent, output units
    total: int  # output length


def plan_axis(n: int, tile: int, stride: int, out_len: Callable[[int], int], extent: int,
              minimal: bool = False) -> AxisPlan:
    """Tiles along one axis of length n.

    Reference rule: ceil(n / stride) tiles at k*stride (the last may sit inside the previous overlap).
    minimal=True: ceil((n - overlap) / stride) tiles, so every tile but the last starts a new stride and the
    last one is longer than the overlap (used for temporal blending, where a 1-latent tile decodes to 1 frame).
    Every tile but the last keeps the outputs of its first `stride` inputs, out_len(tile) * stride / tile (not
    out_len(stride): a 1-latent tile decodes to 1 frame, but the first latent of a longer tile to 4); the last
    keeps all of its outputs.
    """
    overlap = tile - stride
    count = max(1, math.ceil((n - overlap) / stride)) if minimal else math.ceil(n / stride)
    tiles, offset = [], 0
    for k in range(count):
        start = k * stride
        size = min(tile, n - start)
        keep = out_len(size) if k == count - 1 else out_len(tile) * stride // tile
        tiles.append(AxisTile(start, size, offset, keep))
        offset += keep
    return AxisPlan(tiles, extent, offset)


def ramp_blend(prev: torch.Tensor, tile: torch.Tensor, dim: int, extent: int, fused: bool) -> None:
    """In place: tile's first e slices along dim = prev's last e * (1 - k/e) + tile's * (k/e), k = 0..e-1.

    fused: compute in fp32 (or wider) and round once; else round after each product and the sum (eager bf16 math).
    """
    e = min(prev.shape[dim], tile.shape[dim], extent)
    if e <= 0:
        return
    shape = [1] * tile.ndim
    shape[dim] = e
    w = (torch.arange(e, dtype=torch.float64, device=tile.device) / e).view(shape)
    acc = torch.promote_types(tile.dtype, torch.float32)
    a = prev.narrow(dim, prev.shape[dim] - e, e).to(acc)
    b = tile.narrow(dim, 0, e)
    wa, wb = (1 - w).to(acc), w.to(acc)
    if fused:
        mixed = a * wa + b.to(acc) * wb
    else:
        mixed = (a * wa).to(tile.dtype) + (b.to(acc) * wb).to(tile.dtype)
    b.copy_(mixed)


def _run_tiles(x, fn, plans, chained: bool, fused: bool, out_device, callback, tile_batch: int = 1):
    """Apply fn to every (t, h, w) tile of x in raster order, blend with the previous tiles and assemble.

    chained: blend the tile itself in place, so its later neighbours see the blended values (reference
    encode); else blend a copy against raw neighbours (reference decode). fused: see ramp_blend.
    tile_batch: up to this many same-sized tiles of one temporal slab go through fn in one call (stacked on the
    batch axis; fn sees each tile as it would alone). Blending only mixes fn's outputs, so it runs afterwards in
    the same raster order either way. Only the current and (when blending in time) the previous slab are kept.
    """
    pt, ph, pw = plans
    total = len(pt.tiles) * len(ph.tiles) * len(pw.tiles)
    out, prev_slab, done = None, None, 0
    for f, tt in enumerate(pt.tiles):
        group_of, tiles = _tile_groups(ph, pw, tile_batch), {}
        slab = []
        for i, th in enumerate(ph.tiles):
            row = []
            for j, tw in enumerate(pw.tiles):
                if (i, j) not in tiles:  # its group's call (with tile_batch 1: this tile alone, when it comes)
                    tiles.update(_run_group(x, fn, tt, group_of[i, j]))
                tile = tiles.pop((i, j))
                res = tile if chained else tile.clone()
                if f > 0 and pt.extent > 0:
                    ramp_blend(prev_slab[i][j], res, 2, pt.extent, fused)
                if i > 0:
                    ramp_blend(slab[i - 1][j], res, 3, ph.extent, fused)
                if j > 0:
                    ramp_blend(row[j - 1], res, 4, pw.extent, fused)
                row.append(tile)
                if out is None:
                    shape = (x.shape[0], res.shape[1], pt.total, ph.total, pw.total)
                    out = torch.empty(shape, dtype=res.dtype, device=out_device)
                out[:, :, tt.offset:tt.offset + tt.keep, th.offset:th.offset + th.keep, tw.offset:tw.offset + tw.keep] = \
                    res[:, :, :tt.keep, :th.keep, :tw.keep]
                done += 1
                if callback is not None:
                    callback(done, total)
            slab.append(row)
        prev_slab = slab if pt.extent > 0 else None
    return out


def _tile_groups(ph: AxisPlan, pw: AxisPlan, tile_batch: int) -> dict:
    """(row, column) -> the group of at most tile_batch same-sized tiles of a slab that goes through fn with it."""
    by_size: dict[tuple[int, int], list] = {}
    for i, th in enumerate(ph.tiles):
        for j, tw in enumerate(pw.tiles):
            by_size.setdefault((th.size, tw.size), []).append((i, j, th, tw))
    group_of = {}
    for same in by_size.values():
        for k in range(0, len(same), tile_batch):
            for i, j, _, _ in same[k:k + tile_batch]:
                group_of[i, j] = same[k:k + tile_batch]
    return group_of


def _run_group(x, fn, tt: AxisTile, group: list) -> dict:
    """fn on a group's tiles of the temporal slab tt, stacked on the batch axis -> (row, column) -> its output."""
    crops = [x[:, :, tt.start:tt.start + tt.size, th.start:th.start + th.size, tw.start:tw.start + tw.size]
             for _, _, th, tw in group]
    y = fn(crops[0] if len(crops) == 1 else torch.cat(crops, 0))
    B = x.shape[0]
    return {(i, j): y[n * B:(n + 1) * B] for n, (i, j, _, _) in enumerate(group)}


AUTO_TILE_BATCH = 16  # same-sized tiles per VAE call on CUDA when tile_batch is None (CPU: 1)


def _tile_batch(tile_batch, vae) -> int:
    """tile_batch, or for None: AUTO_TILE_BATCH on CUDA (a 720x720 chunk's decode 397 -> 290 ms on an H100, frames
    bit-identical: BENCHMARKS.md session 10), 1 elsewhere (one tile per call, as the reference)."""
    if tile_batch is None:
        return AUTO_TILE_BATCH if vae.device.type == "cuda" else 1
    if isinstance(tile_batch, bool) or not (isinstance(tile_batch, int) and tile_batch >= 1):
        raise ValueError(f"tile_batch must be an int >= 1 (tiles per VAE call), got {tile_batch!r}")
    return tile_batch


def _spatial_tiles(cfg, tile_size: int, tile_overlap: float) -> tuple[int, int]:
    """-> (tile, overlap) in latent units, checked to give pixel-exact strides."""
    p = cfg.patch_size
    if tile_size <= 0 or tile_size % p:
        raise ValueError(f"tile_size must be a positive multiple of {p}, got {tile_size}")
    if not 0 <= tile_overlap < 1:
        raise ValueError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
    tile = tile_size // p
    overlap = int(tile * tile_overlap)
    if int(tile_size * (1 - tile_overlap)) != (tile - overlap) * p:
        raise ValueError(f"tile_size * (1 - tile_overlap) must be a multiple of {p} px; use e.g. 0.25 or 0.5")
    return tile, overlap


def _tile_frames(cfg, fps: int, tile_frames: int | None) -> int:
    frames = fps // 2 if tile_frames is None else tile_frames
    if frames < cfg.patch_length:
        raise ValueError(f"temporal VAE tiles are fps // 2 frames and need at least {cfg.patch_length}: "
                         f"use fps >= {2 * cfg.patch_length} (got fps={fps}, tile_frames={tile_frames})")
    return frames


def check_temporal_overlap(cfg, fps: int, tile_frames: int | None, temporal_overlap, tile_frames_hint=True) -> int:
    """The latent frames of a temporal decode tile, after checking that `temporal_overlap` fits in one.
    tile_frames_hint: the error suggests tile_frames (the decode nodes have it; the command line does not)."""
    frames = _tile_frames(cfg, fps, tile_frames)
    t_tile = frames // cfg.patch_length
    if not (isinstance(temporal_overlap, int) and 0 <= temporal_overlap < t_tile):
        # worded without "fps": the command line turns that word into its flag (cli_generate._flags)
        tiles = f"{frames} frames" + (f", half of {fps} frames per second" if frames == fps // 2 else "")
        raise ValueError(f"temporal_overlap must be an int in [0, {t_tile - 1}] latent frames, got {temporal_overlap}: "
                         f"temporal tiles are {t_tile} latent frames ({tiles})"
                         + (f"; lower temporal_overlap or raise tile_frames (0 = half the frame rate; each "
                            f"{cfg.patch_length} frames add one latent frame)" if tile_frames_hint else ""))
    return t_tile


def _encode_time_plan(frames: int, tile_frames: int, patch_length: int) -> AxisPlan:
    """Temporal tiles of an encode: `tile_frames` frames each without overlap; a tile of n frames gives
    n // patch_length latents (frames beyond a multiple are dropped, as the encoder's strided patch embedding
    does) and a 1-frame tile gives 1 (T == 1 rule). A tile of 2 .. patch_length - 1 frames cannot be encoded
    (the reference's encoder fails on it): ValueError naming the frame counts that work."""
    pt = plan_axis(frames, tile_frames, tile_frames, lambda n: 1 if n == 1 else n // patch_length, 0)
    short = pt.tiles[-1].size
    if 1 < short < patch_length:
        ok = [n for n in (frames - short, frames - short + 1, frames - short + patch_length) if n >= 1]
        raise ValueError(f"a {frames}-frame video leaves a last temporal VAE tile of {short} frames (tiles of "
                         f"{tile_frames} frames); the VAE encodes 1 or at least {patch_length} frames per tile (the "
                         f"reference fails here too): use {', '.join(map(str, ok[:-1]))} or {ok[-1]} frames")
    return pt


def encoded_frames(frames: int, tile_frames: int, patch_length: int = 4) -> int:
    """Latent frames `tiled_encode` makes of `frames` pixel frames in temporal tiles of `tile_frames`
    (the reference: fps // 2). 25 frames at 24 fps: tiles 12 + 12 + 1 -> 3 + 3 + 1 = 7. Raises ValueError
    for counts the VAE cannot encode (see _encode_time_plan)."""
    if frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {frames}")
    return _encode_time_plan(frames, tile_frames, patch_length).total


@torch.no_grad()
def tiled_encode(vae: ViTVAE, video: torch.Tensor, fps: int = 24, *, tile_size: int = 256,
                 tile_overlap: float = 0.25, tile_frames: int | None = None, scale_factor: float = SCALE_FACTOR,
                 out_device=None, callback=None, tile_batch: int | None = None) -> torch.Tensor:
    """Video (B, 3, T, H, W) in [-1, 1] -> DiT-space latent (posterior mean * scale_factor), tile by tile.

    Tiles: `tile_size` px with `tile_overlap`, `tile_frames` (default fps // 2) frames without overlap.
    A 1-frame temporal tile gives 1 latent (T == 1 rule); each tile drops frames beyond a multiple of 4.
    Runs in the VAE's dtype; tiles move to the VAE's device one call at a time (tile_batch
    same-sized tiles of a temporal slab per call; None: 16 on CUDA, 1 elsewhere); the result lands on out_device
    (default: the video's device). callback(done, total) is called after each tile.
    """
    cfg = vae.cfg
    vae.check_video(video)
    tile, overlap = _spatial_tiles(cfg, tile_size, tile_overlap)
    frames = _tile_frames(cfg, fps, tile_frames)
    p, pl = cfg.patch_size, cfg.patch_length
    T, H, W = video.shape[2:]

    pt = _encode_time_plan(T, frames, pl)
    ph = plan_axis(H, tile * p, (tile - overlap) * p, lambda n: n // p, overlap)
    pw = plan_axis(W, tile * p, (tile - overlap) * p, lambda n: n // p, overlap)
    out = _run_tiles(video, vae.encode, (pt, ph, pw), chained=True, fused=False,
                     out_device=video.device if out_device is None else out_device, callback=callback,
                     tile_batch=_tile_batch(tile_batch, vae))
    return out.mul_(scale_factor)


@torch.no_grad()
def tiled_decode(vae: ViTVAE, latent: torch.Tensor, fps: int = 24, *, tile_size: int = 256,
                 tile_overlap: float = 0.25, tile_frames: int | None = None, temporal_overlap: int = 0,
                 scale_factor: float = SCALE_FACTOR, out_device=None, callback=None,
                 tile_batch: int | None = None) -> torch.Tensor:
    """DiT-space latent (B, 16, T', H', W') -> video (B, 3, T, 8H', 8W'), nominally [-1, 1], VAE dtype.

    Tiles: `tile_size` px (tile_size/8 latents) with `tile_overlap`, (fps // 2) // 4 latent frames.
    T = 4T' except that a last temporal tile of 1 latent decodes to 1 frame (reference quirk).
    temporal_overlap: latent frames shared by consecutive temporal tiles, blended over 4x that many frames
    (0 = reference; 1 removes the seam at a 1.5x decode cost with 3-latent tiles). When > 0, tiles are also
    blended in place (as in encode), so a tile's spatial neighbours are already blended in time; the
    reference's copy-based blend would bring the neighbours' raw tile-edge frames back in at the corners.
    tile_batch: same-sized tiles of a temporal slab per VAE call (1 = the reference: one tile per call; None: 16 on
    CUDA, 1 elsewhere).
    """
    cfg = vae.cfg
    vae.check_latent(latent)
    tile, overlap = _spatial_tiles(cfg, tile_size, tile_overlap)
    p, pl = cfg.patch_size, cfg.patch_length
    t_tile = check_temporal_overlap(cfg, fps, tile_frames, temporal_overlap)
    T, H, W = latent.shape[2:]

    def t_out(n):
        return 1 if n == 1 else n * pl

    pt = plan_axis(T, t_tile, t_tile - temporal_overlap, t_out, temporal_overlap * pl, minimal=temporal_overlap > 0)
    ph = plan_axis(H, tile, tile - overlap, lambda n: n * p, overlap * p)
    pw = plan_axis(W, tile, tile - overlap, lambda n: n * p, overlap * p)
    return _run_tiles(latent / scale_factor, vae.decode, (pt, ph, pw), chained=temporal_overlap > 0, fused=True,
                      out_device=latent.device if out_device is None else out_device, callback=callback,
                      tile_batch=_tile_batch(tile_batch, vae))
