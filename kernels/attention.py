"""Range attention: query range i attends (full, non-causal) to key range i.

One function serves MAGI-1's block-causal self-attention (chunk i -> kv_range i; key ranges of chunks overlap)
and its varlen cross-attention (chunk i -> chunk i's valid caption tokens; disjoint, possibly empty key ranges).
GQA: query head j uses KV head j // (nh/g). Query rows outside every range, or whose key range is empty, get 0.

Backends (`range_attention(..., backend=...)`, or `set_default_backend`):
- "sdpa":  one torch SDPA call per range on slices, no mask, native GQA. Always available; the reference math.
- "cudnn": the same per-range SDPA calls pinned to the cuDNN kernel (CUDA), SDPA's own GQA; where a torch
           version's cuDNN path rejects GQA, the query heads that share a KV head are folded into the query
           length instead (no K/V repeat either way).
- "flex":  torch FlexAttention, ONE launch with a BlockMask built from the ranges (cached per ranges/shape).
           Compiled on CUDA; on CPU it runs flex's eager (unfused) path, only meant for tests.
- "flash": flash-attn 2. Key ranges that tile one contiguous span (cross-attention) -> one
           `flash_attn_varlen_func` call, as the reference does; overlapping key ranges (self-attention) -> one
           `flash_attn_func` per range on slices, as the reference's non-Hopper path does. Gathering K/V per range
           for a single varlen call would copy up to 5x the KV cache, so we loop instead.
- "magi":  MagiAttention `flex_flash_attn_func` (Hopper), one launch; its signature changed across versions
           (max_seqlen_q/k dropped in v1.0.4, keyword-only + (out, meta) return in v1.1), so the call is built
           from the installed function's signature.
- "fp8-approx": cuDNN's FP8 SDPA on Hopper (kernels/attention_fp8.py), Q/K/V/output in e4m3 with smoothed K
           and V and their own scales (the DiT hands over queries already in e4m3): faster and APPROXIMATE (README.md states the measured error). Opt-in only; where it
           cannot run (no nvidia-cudnn-frontend, not Hopper) it warns and the bf16 path runs instead.
- None / "auto": "magi" on sm90+ when installed, else "cudnn" on sm90+, else "flash" on sm8x when installed, else
  "sdpa". On Hopper cuDNN's kernel ran at 570-630 TFLOP/s at MAGI-1's shapes, flash (SDPA's or flash-attn 2) at
  ~350 (bench/attention_sweep.py); torch 2.11's SDPA already picks cuDNN there, other versions may not. Every non-SDPA backend is checked once per device against SDPA
  on a small case before first use; on failure it falls back to SDPA with a warning.
"""
from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F

from . import attention_fp8, capability

FP8 = "fp8-approx"
BACKENDS = ("sdpa", "cudnn", "flex", "flash", "magi", FP8)
_HALF = (torch.float16, torch.bfloat16)
_default_backend: str | None = None


# ----------------------------------------------------------------------------- inputs

def _as_pairs(ranges) -> list[tuple[int, int]]:
    if isinstance(ranges, torch.Tensor):
        ranges = ranges.tolist()
    return [(int(a), int(b)) for a, b in ranges]


def _check_inputs(q, k, v, qr, kr):
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"range_attention expects q (Sq, nh, d) and k, v (Sk, g, d) of equal shape; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"head dims must match and nh must be a multiple of g; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if len(qr) != len(kr):
        raise ValueError(f"q_ranges and k_ranges must have the same length; got {len(qr)} and {len(kr)}")
    for name, ranges, n in (("q_ranges", qr, q.shape[0]), ("k_ranges", kr, k.shape[0])):
        for a, b in ranges:
            if not 0 <= a <= b <= n:
                raise ValueError(f"{name} entry ({a}, {b}) is not a [start, end) range inside 0..{n}")
    last = 0
    for a, b in sorted(r for r in qr if r[1] > r[0]):
        if a < last:
            raise ValueError(f"q_ranges overlap at ({a}, {b}); each query row may belong to one range only")
        last = b


def _live_pairs(qr, kr):
    """Range pairs with at least one query and one key (the others produce zeros)."""
    return [(a, b) for a, b in zip(qr, kr) if a[1] > a[0] and b[1] > b[0]]


def _zero_uncovered(out, live_q):
    """Zero query rows outside every live range (for kernels that leave them unwritten)."""
    pos = 0
    for s, e in sorted(live_q) + [(out.shape[0], out.shape[0])]:
        if s > pos:
            out[pos:s] = 0
        pos = max(pos, e)
    return out


# ----------------------------------------------------------------------------- sdpa

def _output(q, live, out):
    """The output buffer: zeros like q, or the caller's `out` with the rows no range covers zeroed."""
    return torch.zeros_like(q) if out is None else _zero_uncovered(out, [a for a, _ in live])


def sdpa_range_attention(q, k, v, q_ranges, k_ranges, scale=None, out=None):
    """Reference backend: one torch SDPA call per range, no masks, GQA native (no K/V repeat)."""
    live = _live_pairs(_as_pairs(q_ranges), _as_pairs(k_ranges))
    out = _output(q, live, out)
    gqa = q.shape[1] != k.shape[1]
    for (qs, qe), (ks, ke) in live:
        # 4-D (1, heads, len, d) views: SDPA's fused CUDA kernels reject 3-D inputs and fall back to the math
        # kernel, which materialises the full score matrix (tens of GB at MAGI-1 sizes)
        o = F.scaled_dot_product_attention(q[None, qs:qe].transpose(1, 2), k[None, ks:ke].transpose(1, 2),
                                           v[None, ks:ke].transpose(1, 2), scale=scale, enable_gqa=gqa)
        out[qs:qe] = o[0].transpose(0, 1)
    return out


def fold_heads(q, groups: int):
    """(L, nh, d) -> (1, g, nh/g * L, d): the query heads of one KV head stacked along the query axis."""
    L, nh, d = q.shape
    return q.view(L, groups, nh // groups, d).permute(1, 2, 0, 3).reshape(1, groups, nh // groups * L, d)


def unfold_heads(o, L: int):
    """Inverse of fold_heads: (1, g, nh/g * L, d) -> (L, nh, d)."""
    _, g, rows, d = o.shape
    return o.view(g, rows // L, L, d).permute(2, 0, 1, 3).reshape(L, -1, d)


_cudnn_native_gqa: bool | None = None  # does this torch's cuDNN SDPA take enable_gqa? (tried once)


def cudnn_range_attention(q, k, v, q_ranges, k_ranges, scale=None, out=None):
    """cuDNN SDPA per range on strided views with SDPA's own GQA; torch versions whose cuDNN path rejects GQA get
    the query heads folded into the query length instead (two more copies per range, see the module doc)."""
    global _cudnn_native_gqa
    from torch.nn.attention import SDPBackend, sdpa_kernel

    live = _live_pairs(_as_pairs(q_ranges), _as_pairs(k_ranges))
    out = _output(q, live, out)
    g = k.shape[1]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for (qs, qe), (ks, ke) in live:
            kt, vt = k[None, ks:ke].transpose(1, 2), v[None, ks:ke].transpose(1, 2)
            if _cudnn_native_gqa is not False:
                try:
                    o = F.scaled_dot_product_attention(q[None, qs:qe].transpose(1, 2), kt, vt, scale=scale,
                                                       enable_gqa=g != q.shape[1])
                    out[qs:qe] = o[0].transpose(0, 1)
                    _cudnn_native_gqa = True
                    continue
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError:
                    if _cudnn_native_gqa:
                        raise
                    _cudnn_native_gqa = False
            o = F.scaled_dot_product_attention(fold_heads(q[qs:qe], g), kt, vt, scale=scale)
            out[qs:qe] = unfold_heads(o, qe - qs)
    return out


# ----------------------------------------------------------------------------- flex

_block_masks: OrderedDict = OrderedDict()
_compiled_flex = None
FLEX_BLOCK = 128


def _row_key_bounds(qr, kr, rows):
    """Per query row: [lo, hi) key bounds and whether the row attends at all (rows >= Sq are padding)."""
    lo = torch.zeros(rows, dtype=torch.int64)
    hi = torch.zeros(rows, dtype=torch.int64)
    for (qs, qe), (ks, ke) in _live_pairs(qr, kr):
        lo[qs:qe], hi[qs:qe] = ks, ke
    return lo, hi, hi > lo


def block_structure(qr, kr, sq, sk, block=FLEX_BLOCK):
    """(partial, full) bool (q_blocks, kv_blocks): blocks with some / all (q, k) pairs allowed by the ranges.

    A q block can straddle two chunks (chunk sizes are not multiples of 128), so per block the union of its rows'
    key intervals bounds the partial blocks and their intersection gives the full ones. Padding rows/cols past
    Sq/Sk are ignored.
    """
    nqb, nkb = -(-sq // block), -(-sk // block)
    lo, hi, live = _row_key_bounds(qr, kr, nqb * block)
    real = torch.arange(nqb * block) < sq
    lo, hi, live, real = (t.view(nqb, block) for t in (lo, hi, live, real))
    big = sk + 1
    union_lo = torch.where(live, lo, big).amin(1, keepdim=True)
    union_hi = torch.where(live, hi, -1).amax(1, keepdim=True)
    inter_lo = torch.where(real, torch.where(live, lo, big), -1).amax(1, keepdim=True)
    inter_hi = torch.where(real, torch.where(live, hi, -1), big).amin(1, keepdim=True)
    start = torch.arange(nkb)[None] * block
    end = (start + block).clamp(max=sk)
    touched = (start < union_hi) & (end > union_lo)
    full = (start >= inter_lo) & (end <= inter_hi)
    return touched & ~full, full


def _to_kv_blocks(m):
    """Bool (nqb, nkb) -> (num (1,1,nqb) int32, indices (1,1,nqb,nkb) int32 with the selected blocks first)."""
    num = m.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None], idx[None, None]


def _flex_block_mask(qr, kr, sq, sk, device):
    from torch.nn.attention.flex_attention import BlockMask

    key = (tuple(qr), tuple(kr), sq, sk, str(device))
    if key in _block_masks:
        _block_masks.move_to_end(key)
        return _block_masks[key]
    partial, full = block_structure(qr, kr, sq, sk)
    lo, hi, _ = _row_key_bounds(qr, kr, sq)
    lo, hi = lo.to(device), hi.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= lo[q_idx]) & (kv_idx < hi[q_idx])

    num, idx = _to_kv_blocks(partial)
    fnum, fidx = _to_kv_blocks(full)
    bm = BlockMask.from_kv_blocks(num.to(device), idx.to(device), fnum.to(device), fidx.to(device),
                                  BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(sq, sk))
    _block_masks[key] = bm
    if len(_block_masks) > 16:
        _block_masks.popitem(last=False)
    return bm


def flex_range_attention(q, k, v, q_ranges, k_ranges, scale=None):
    """FlexAttention backend: one launch over all ranges with a range BlockMask."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    qr, kr = _as_pairs(q_ranges), _as_pairs(k_ranges)
    bm = _flex_block_mask(qr, kr, q.shape[0], k.shape[0], q.device)
    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    kw = dict(block_mask=bm, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        o = _compiled_flex(*args, **kw)
    else:  # eager (unfused) path: torch 2.13's compiled CPU flex gave wrong rows on range masks in our probes
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            o = flex_attention(*args, **kw)
    return o[0].transpose(0, 1).contiguous()


# ----------------------------------------------------------------------------- flash-attn

def _tiles(ranges) -> bool:
    """True when the ranges are consecutive: each starts where the previous ended (empty ones allowed)."""
    return all(b[0] == a[1] for a, b in zip(ranges, ranges[1:]))


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def flash_range_attention(q, k, v, q_ranges, k_ranges, scale=None):
    """flash-attn 2 backend: one varlen call for consecutive ranges, else one flash_attn_func per range."""
    fa = capability.optional_module("flash_attn")
    qr, kr = _as_pairs(q_ranges), _as_pairs(k_ranges)
    live = _live_pairs(qr, kr)
    out = torch.zeros_like(q)
    if not live:
        return out
    if len(qr) > 1 and _tiles(qr) and _tiles(kr):
        q0, q1, k0, k1 = qr[0][0], qr[-1][1], kr[0][0], kr[-1][1]
        cu_q = torch.tensor([0] + [e - q0 for _, e in qr], dtype=torch.int32, device=q.device)
        cu_k = torch.tensor([0] + [e - k0 for _, e in kr], dtype=torch.int32, device=q.device)
        o = fa.flash_attn_varlen_func(q[q0:q1], k[k0:k1], v[k0:k1], cu_q, cu_k,
                                      max(e - s for s, e in qr), max(e - s for s, e in kr),
                                      softmax_scale=scale, causal=False)
        out[q0:q1] = _first(o)
        return _zero_uncovered(out, [a for a, _ in live])
    for (qs, qe), (ks, ke) in live:
        o = fa.flash_attn_func(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], softmax_scale=scale, causal=False)
        out[qs:qe] = _first(o)[0]
    return out


# ----------------------------------------------------------------------------- MagiAttention

def _magi_params(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # C-level callables without a signature
        return set()


def magi_range_attention(q, k, v, q_ranges, k_ranges, scale=None):
    """MagiAttention flex_flash_attn_func backend (one launch). Ranges without keys are dropped and zeroed."""
    fn = capability.optional_module("magi_attention.functional").flex_flash_attn_func
    live = _live_pairs(_as_pairs(q_ranges), _as_pairs(k_ranges))
    if not live:
        return torch.zeros_like(q)
    params = _magi_params(fn)
    qt = torch.tensor([a for a, _ in live], dtype=torch.int32, device=q.device)
    kt = torch.tensor([b for _, b in live], dtype=torch.int32, device=q.device)
    kw = {"softmax_scale": scale, "disable_fwd_atomic_reduction": True}  # q ranges never overlap (checked)
    if "max_seqlen_q" in params:  # required in <= v1.0.3, optional (tile-scheduler hint) in v1.1
        kw["max_seqlen_q"] = max(e - s for (s, e), _ in live)
    if "max_seqlen_k" in params:  # only <= v1.0.3
        kw["max_seqlen_k"] = max(e - s for _, (s, e) in live)
    if "deterministic" in params:
        kw["deterministic"] = torch.are_deterministic_algorithms_enabled()
    o = _first(fn(q, k, v, qt, kt, **kw)).to(q.dtype)  # (out, lse) <= v1.0.5, (out, meta) >= v1.1
    return _zero_uncovered(o, [a for a, _ in live])


# ----------------------------------------------------------------------------- selection

_IMPLS = {"sdpa": sdpa_range_attention, "cudnn": cudnn_range_attention, "flex": flex_range_attention,
          "flash": flash_range_attention, "magi": magi_range_attention, FP8: attention_fp8.fp8_range_attention}
_MODULES = {"flex": "torch.nn.attention.flex_attention", "flash": "flash_attn", "magi": "magi_attention.functional"}


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)} "
                         f"or None/'auto' ({capability.describe()})")


def _why_unusable(name: str, q) -> str | None:
    """Why backend `name` cannot run on tensors like q, or None when it can."""
    if name in _MODULES and capability.optional_module(_MODULES[name]) is None:
        return f"{_MODULES[name].split('.')[0]} is not importable"
    if name == FP8:
        return attention_fp8.why_unusable(q)
    if name in ("flash", "magi", "cudnn"):
        if not q.is_cuda:
            return "it needs a CUDA GPU"
        if q.dtype not in _HALF:
            return f"it needs float16/bfloat16 inputs, got {q.dtype}"
    return None


def settings_problem(name: str | None, device) -> str | None:
    """What is wrong with attention backend `name` on `device`, checked from the settings before anything loads:
    None when it can run (or is automatic, or is fp8-approx, which falls back to bf16 with a note instead)."""
    if name in (None, "auto", FP8):
        return None
    why = _why_unusable(name, capability.probe(device))
    if why is None:
        return None
    usable = ", ".join(["auto"] + [n for n in BACKENDS if n != FP8 and _why_unusable(n, capability.probe(device)) is None])
    return f"attention backend {name!r} can't run on {device}: {why}. Usable there: {usable}"


def available_backends(q) -> list[str]:
    """Backends that can run on tensors like q (device and dtype)."""
    return [n for n in BACKENDS if _why_unusable(n, q) is None]


def set_default_backend(name: str | None):
    """Backend used when range_attention gets backend=None; None or 'auto' restores automatic choice."""
    global _default_backend
    if name in (None, "auto"):
        _default_backend = None
        return
    _check_name(name)
    if name in _MODULES and capability.optional_module(_MODULES[name]) is None:
        raise RuntimeError(f"attention backend {name!r} is unavailable: {_MODULES[name]} is not importable "
                           f"({capability.describe()})")
    _default_backend = name


def _self_check(name: str, device) -> bool:
    """Small bf16 case with GQA, overlapping, consecutive and empty key ranges: backend vs SDPA (the approximate
    fp8 backend: relative L2 error within 0.1, which a wrong scale or layout exceeds many times over)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(s, h, 128, generator=g).to(device, torch.bfloat16) for s, h in ((230, 4), (200, 2), (200, 2)))
    cases = ([(0, 70), (70, 140), (140, 230)], [(0, 70), (0, 140), (70, 200)]), \
            ([(0, 70), (70, 140), (140, 230)], [(0, 50), (50, 50), (50, 200)])
    for qr, kr in cases:
        ref = sdpa_range_attention(q.float(), k.float(), v.float(), qr, kr)
        outs = [_IMPLS[name](q, k, v, qr, kr, **({"min_keys": 0} if name == FP8 else {})).float()]  # fp8 itself
        if name == FP8:  # and with queries made in e4m3, as the DiT hands them over (magi_core/dit/layer.py)
            scale = attention_fp8.E4M3_MAX / (2 * q.float().abs().amax())  # a bound's headroom, as in the DiT
            q8, q_descale = attention_fp8.quantize_q_bound(q.float(), scale)
            outs.append(attention_fp8.fp8_range_attention(q8, k, v, qr, kr, out=torch.empty_like(q), min_keys=0,
                                                          q_descale=q_descale).float())
        for out in outs:
            if not (out.shape == ref.shape and torch.isfinite(out).all()):
                return False
            if (((out - ref).norm() / ref.norm()) > 0.1) if name == FP8 else ((out - ref).abs().max() >= 3e-2):
                return False
    return True


def _automatic(q) -> str:
    cc = capability.cuda_capability(q.device)
    prefs = (["magi", "cudnn"] if cc and cc >= (9, 0) else ["flash"] if cc else []) + ["sdpa"]
    return next(n for n in prefs if _why_unusable(n, q) is None)


def resolve_backend(backend: str | None, q) -> str:
    """The backend that range_attention will run for tensors like q (argument > default > automatic)."""
    name = backend if backend not in (None, "auto") else _default_backend
    if name is None:
        name = _automatic(q)
    else:
        _check_name(name)
        why = _why_unusable(name, q)
        if why and name == FP8:  # opt-in speed-up: say why, then run the exact bf16 path
            warnings.warn(f"attention backend {FP8!r} is unavailable here: {why}. Running the bf16 attention "
                          f"path instead ({capability.describe()}).", RuntimeWarning, stacklevel=3)
            name = _automatic(q)
            why = None
        if why:
            raise RuntimeError(f"attention backend {name!r} is unavailable here: {why}. Usable for these inputs: "
                               f"{', '.join(available_backends(q))} ({capability.describe()})")
    if name != "sdpa" and q.is_cuda:
        if not capability.verified((name, str(q.device)), lambda: _self_check(name, q.device), f"attention backend {name!r}"):
            name = "sdpa"
    return name


def range_attention(q, k, v, q_ranges, k_ranges, backend: str | None = None, scale=None, out=None):
    """q (Sq, nh, d), k/v (Sk, g, d) -> (Sq, nh, d) in q's dtype; query range i attends to key range i.

    q_ranges/k_ranges: (n, 2) [start, end) pairs (lists or CPU int tensors). scale defaults to 1/sqrt(d).
    out: optional (Sq, nh, d) tensor (a strided view is fine) to write the result into, returned.
    """
    qr, kr = _as_pairs(q_ranges), _as_pairs(k_ranges)
    _check_inputs(q, k, v, qr, kr)
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    name = resolve_backend(backend, q)
    if out is None:
        return _IMPLS[name](q, k, v, qr, kr, scale=scale)
    if name in ("sdpa", "cudnn", FP8):  # they write into out themselves
        return _IMPLS[name](q, k, v, qr, kr, scale=scale, out=out)
    return out.copy_(_IMPLS[name](q, k, v, qr, kr, scale=scale))
