"""VideoDiT: MAGI-1's diffusion transformer (official `inference/model/dit/dit_model.py`; docs/model.md).
Output is the flow velocity dx/dt."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig
from ..kernels import attention, attention_fp8
from .cache import KVCache
from .layer import ForwardMeta, TransformerBlock
from .layers import CaptionEmbedder, FinalLinear, TimestepEmbedder
from .rope import LearnableRoPE

PRECISIONS = ("exact", "fast")


class VideoDiT(nn.Module):
    """State-dict compatible with the official `VideoDiTModel` (names, shapes, dtypes after promotion)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        k = (cfg.t_patch_size, cfg.patch_size, cfg.patch_size)
        self.x_embedder = nn.Conv3d(cfg.in_channels, cfg.hidden_size, k, stride=k, bias=False, dtype=cfg.params_dtype)
        self.t_embedder = TimestepEmbedder(cfg)
        self.y_embedder = CaptionEmbedder(cfg)
        self.rope = LearnableRoPE(cfg.hidden_size // cfg.num_attention_heads)
        self.videodit_blocks = TransformerBlock(cfg)
        self.final_linear = FinalLinear(cfg)
        self.precision = "fast"
        self.attn_backend: str | None = None
        self.compile_ops = False  # torch.compile the element-wise islands (kernels/compiled.py); CUDA only
        self.e4m3_queries = True  # FP8 self-attention takes e4m3 queries from the layers (False: measurements only)
        self.block_swap = None  # magi_core.dit.offload.BlockSwap when layers stream from host memory (DiTRuntime)
        self.cp = None  # context parallel group (magi_core.parallel.enable_context_parallel), None = one GPU

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor,
        kv_range,
        *,
        slice_point: int = 0,
        uncond=False,
        cache: KVCache | None = None,
        cache_write_chunks: int = 0,
        dt_factor: float | None = None,
    ) -> torch.Tensor:
        """One DiT call over `dn = t.shape[1]` chunks per batch element.

        x: (N, C, T, H, W) latents (C = 16, the VAE's channels); t: (N, dn) flow time, 1 = clean.
        y: (N*dn, L, Cc) caption embeddings, one per (batch, chunk); y_mask: (N*dn, L), 1 = valid token.
        kv_range: (N*dn, 2) absolute key-token ranges [start, end) on the axis [cached chunks ; this forward].
        slice_point: absolute index of this forward's first chunk (RoPE time, cache position).
        uncond: adaLN token: True -> null_caption_embedding[-1], False -> [-2]. A bool projects one row and
            broadcasts it over the batch, as the reference's one-element `caption_dropout_mask` does (the CFG
            uncond pass in `inference/model/dit/dit_model.py` `forward_3cfg`); (N,) bools project a row each.
        cache: KV cache (batch 1); chunks below slice_point that kv_range reaches are read from it.
        cache_write_chunks: how many leading chunks of this forward to store in the cache.
        dt_factor: distill step-size embedding value (required iff the model is distilled).
        Returns the velocity (N, C, T, H, W), fp32.
        """
        cfg = self.cfg
        N, C, T, H, W = x.shape
        dn = t.shape[1]
        kv = [(int(a), int(b)) for a, b in (kv_range.tolist() if torch.is_tensor(kv_range) else kv_range)]
        self._check(x, t, y, y_mask, kv, cache, dt_factor, uncond)
        dev = x.device
        p, pt = cfg.patch_size, cfg.t_patch_size
        Tp, Hp, Wp = T // pt, H // p, W // p
        S = Tp * Hp * Wp
        ctn = S // dn

        # embeddings (fp32)
        x = x * cfg.x_rescale_factor
        if cfg.half_channel_vae:
            x = torch.cat([x, x], dim=1)
        w = self.x_embedder.weight
        hs = F.conv3d(x.float(), w.float(), stride=self.x_embedder.stride)  # (N, h, Tp, Hp, Wp)
        hs = hs.to(cfg.params_dtype).flatten(2).transpose(1, 2).contiguous()  # (N, S, h), token order (T, H, W)

        t_emb = self.t_embedder(t.flatten())
        if cfg.distill:
            t_emb = t_emb + self.t_embedder(torch.full_like(t.flatten().float(), float(dt_factor)))
        unc = torch.as_tensor(uncond, dtype=torch.bool, device=dev).reshape(-1)  # (1,): one row, broadcast
        condition = (t_emb.view(N, dn, -1) + self.y_embedder.adaln(unc)[:, None]).to(cfg.params_dtype)

        valid = y_mask.reshape(y.shape[0], -1).bool().to(dev)
        y_xattn = self.y_embedder.xattn_tokens(y.to(dev), valid, padded=self.precision == "exact").to(cfg.params_dtype)
        lens = valid.sum(-1).tolist()

        rope = self.rope.table(Tp, Hp, Wp, t_offset=(Tp // dn) * slice_point)

        # packing: chunk i of batch b is query range b*S + i*ctn ...
        q_ranges = [(i * ctn, (i + 1) * ctn) for i in range(N * dn)]
        xk, pos = [], 0
        for n in lens:
            xk.append((pos, pos + n))
            pos += n
        read = (0, 0)
        origin = slice_point * ctn if cache is not None else 0
        if cache is not None:
            first = min(slice_point, min(a for a, _ in kv) // ctn)
            read = (first, slice_point)
            origin = first * ctn
        k_ranges = [(a - origin, b - origin) for a, b in kv]
        m = ForwardMeta(
            batch=N, seq=S, chunks=dn, tokens_per_chunk=ctn, rope=rope.to(dev), q_ranges=q_ranges,
            k_ranges=k_ranges, xq_ranges=q_ranges, xk_ranges=xk, cache=cache, cache_read=read,
            cache_write_chunks=cache_write_chunks, cache_write_at=slice_point, precision=self.precision,
            attn_backend=self.attn_backend, compile_ops=self.compile_ops,
            e4m3_queries=self._e4m3_queries(hs, k_ranges),
        )
        if self.cp is not None:  # CP hook: keep this rank's tokens (magi_core/parallel/ulysses.py)
            hs, m = self.cp.shard(hs, m)
        try:
            handoff = []  # a layer's pre-norm made by the layer before it (layer.py gated_residual)
            for i, layer in enumerate(self.videodit_blocks.layers):
                hs = layer(hs, condition, y_xattn, m, handoff, self._next_qkv(i, hs))
        except BaseException:  # e.g. out of memory inside a streamed layer: its weights go back to the host
            if self.block_swap is not None:
                self.block_swap.release()
            raise
        hs = self.videodit_blocks.final_layernorm(hs.float())
        out = self.final_linear(hs)  # (N, S, pt*p*p*C) fp32
        if self.cp is not None:  # CP hook: all ranks get the full output
            out = m.cp.gather(out, N, S)
        out = out.view(N, Tp, Hp, Wp, pt, p, p, -1).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(N, -1, T, H, W)
        if cfg.half_channel_vae:
            out = out[:, : cfg.in_channels // 2]
        return out / cfg.x_rescale_factor

    def _check(self, x, t, y, y_mask, kv, cache, dt_factor, uncond):
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.vae_channels:
            raise ValueError(f"x must be (N, {cfg.vae_channels}, T, H, W) latents, got {tuple(x.shape)}")
        N, _, T, H, W = x.shape
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"latent H, W ({H}, {W}) must be multiples of {cfg.patch_size} (video size of 16)")
        if t.dim() != 2 or t.shape[0] != N or T % t.shape[1]:
            raise ValueError(f"t must be (N, chunks) with T={T} divisible by chunks, got {tuple(t.shape)}")
        rows = N * t.shape[1]
        if y.dim() != 3 or y.shape[0] != rows or y.shape[2] != cfg.caption_channels:
            raise ValueError(f"y must be ({rows}, L, {cfg.caption_channels}), got {tuple(y.shape)}")
        if y_mask.reshape(y.shape[0], -1).shape != y.shape[:2]:
            raise ValueError(f"y_mask must be {tuple(y.shape[:2])}, got {tuple(y_mask.shape)}")
        if len(kv) != rows or any(b < a for a, b in kv):
            raise ValueError(f"kv_range must hold {rows} [start, end) pairs, got {kv}")
        if torch.as_tensor(uncond).numel() not in (1, N):
            raise ValueError(f"uncond must be one bool or one per batch element ({N}), got {uncond!r}")
        if cache is not None and N != 1:
            raise ValueError("the KV cache supports batch 1 only")
        if cfg.distill and dt_factor is None:
            raise ValueError("distilled model: pass dt_factor (num_steps/2, or 4|8 for the 12-step shortcut)")

    # ------------------------------------------------------------------ helpers
    def _next_qkv(self, i: int, hs: torch.Tensor):
        """Layer i+1's LinearQKV, whose pre-norm layer i makes in its last kernel (layer.py `gated_residual`);
        None after the last layer, or while block swap keeps layer i+1's weights on the host."""
        layers = self.videodit_blocks.layers
        if i + 1 == len(layers):
            return None
        qkv = layers[i + 1].self_attention.linear_qkv
        on_device = all(p.device == hs.device for p in qkv.parameters())
        return qkv if on_device else None

    def _e4m3_queries(self, hs, k_ranges) -> bool:
        """Whether self-attention runs FP8 with its queries made in e4m3 (magi_core/dit/layer.py norm_rope_e4m3):
        the backend in effect is fp8-approx and can run here, its key ranges are long enough for FP8
        (kernels/attention_fp8.py MIN_KEYS), and no context parallelism (whose all-to-all moves bf16 queries)."""
        if not self.e4m3_queries or self.cp is not None:
            return False
        if max((b - a for a, b in k_ranges), default=0) < attention_fp8.MIN_KEYS:
            return False
        probe = hs.new_empty(0, self.cfg.num_attention_heads, self.cfg.kv_channels)  # queries' shape and dtype
        return attention.resolve_backend(self.attn_backend, probe) == attention.FP8

    @property
    def compile_ops(self) -> bool:
        return self._compile_ops

    @compile_ops.setter
    def compile_ops(self, on: bool):
        """Also sets it on the fp8 linears (they see no ForwardMeta); set it after swapping in fp8 storage."""
        self._compile_ops = bool(on)
        for mod in self.modules():
            if mod is not self and hasattr(mod, "compile_ops"):
                mod.compile_ops = self._compile_ops

    def set_precision(self, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        return self


def promote_high_precision(model: VideoDiT) -> VideoDiT:
    """The reference's promotion list: these modules are cast to fp32 after loading (`dit_model.py`; docs/model.md)."""
    for mod in (model.x_embedder, model.t_embedder, model.y_embedder, model.final_linear, model.rope):
        mod.float()
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("q_layernorm", "k_layernorm", "self_attn_post_norm", "mlp_post_norm", "final_layernorm"):
            mod.float()
    return model


def build_dit(cfg: DiTConfig, device="meta") -> VideoDiT:
    """Construct the model (default on the meta device: no memory), with promoted dtypes."""
    with torch.device(device):
        model = VideoDiT(cfg)
    return promote_high_precision(model).eval().requires_grad_(False)


@torch.no_grad()
def init_random_(model: VideoDiT, seed: int = 0, device=None) -> VideoDiT:
    """Fill every parameter with well-scaled random values (tests, benchmarks). Materializes meta tensors."""
    from magi_core.kernels.fp8 import FP8

    device = torch.device(device or "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape, std):
        return torch.randn(shape, generator=gen, device=device) * std

    for name, prm in list(model.named_parameters()):
        shape, dtype = prm.shape, prm.dtype
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0]
        if leaf == "bands":
            val = LearnableRoPE.default_bands(shape[0]).to(device)
        elif dtype == FP8:
            val = randn(shape, 0.5).clamp(-448, 448)
        elif leaf == "weight_scale":  # effective weight ~ N(0, 1/in) like the bf16 layers
            val = torch.full(shape, 2.0 * model.get_submodule(parent).in_features ** -0.5, device=device)
        elif leaf == "input_scale":
            val = torch.full(shape, 0.05, device=device)  # calibration writes one replicated value
        elif leaf == "smooth_scale":
            val = torch.rand(shape, generator=gen, device=device) * 0.04 + 0.03
        elif leaf == "null_caption_embedding":
            val = randn(shape, 0.2)
        elif prm.dim() == 1 and leaf == "bias":
            val = randn(shape, 0.02)
        elif prm.dim() == 1:  # norm weights: plain gamma ~ 1, zero-centred gamma ~ 0
            plain = parent.endswith("linear_qkv.layer_norm") or parent.endswith("mlp.layer_norm")
            val = randn(shape, 0.05) + (1.0 if plain else 0.0)
        else:
            fan_in = shape[1:].numel()
            val = randn(shape, fan_in ** -0.5)
        new = nn.Parameter(val.to(device=device, dtype=dtype), requires_grad=False)
        mod = model.get_submodule(parent) if "." in name else model
        setattr(mod, leaf, new)
    return model
