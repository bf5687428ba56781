"""An independent float64 MAGI-1 DiT forward written from the official `inference/model/dit/dit_module.py`, for tests.

It reads only the state dict and the config numbers; it calls none of magi_core's modules or helpers.
"""
import math

import torch

f64 = torch.float64


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _rope_table(T_total, H, W, bands, t_first):
    """sin/cos (tokens, 3*nb) for frames t_first..T_total-1, columns axis*nb + k."""
    r = math.sqrt(H * W / 256.0)
    refs = [T_total, H / r, W / r]
    axes = []
    for a, (n, ref) in enumerate(zip([T_total, H, W], refs)):
        c = torch.arange(n, dtype=f64)
        if a > 0:
            c = c - (n - 1) / 2.0
        if n > 1:
            c = c * (ref - 1) / (n - 1)
        axes.append(c)
    rows = []
    for ti in range(t_first, T_total):
        for hi in range(H):
            for wi in range(W):
                coord = [axes[0][ti], axes[1][hi], axes[2][wi]]
                rows.append(torch.cat([coord[a] * bands for a in range(3)]))
    pos = torch.stack(rows)
    return pos.sin(), pos.cos()


def _rotate(x, sin, cos):
    """x (S, heads, d); pairs (i, i+n) for i < n = 3*nb."""
    n = sin.shape[1]
    x1, x2, rest = x[..., :n], x[..., n:2 * n], x[..., 2 * n:]
    s, c = sin[:, None], cos[:, None]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, rest], -1)


def _attn(q, k, v, hpg):
    """q (Sq, nh, d), k/v (Sk, g, d); head j uses group j // hpg; empty keys -> zeros."""
    if k.shape[0] == 0:
        return torch.zeros_like(q)
    out = []
    for j in range(q.shape[1]):
        g = j // hpg
        s = q[:, j] @ k[:, g].T / math.sqrt(q.shape[-1])
        out.append(torch.softmax(s, -1) @ v[:, g])
    return torch.stack(out, 1)


def fp8_as_linear(P):
    """The official fp8 linears (`PerTensorQuantizedFp8Linear`, `PerChannelQuantizedFp8Linear`) as float64 weights
    with the activation quantization left out: y = fp8(x / s) @ w^T * input_scale[0] * weight_scale[0], where s is
    the smoothing scale (per channel) or else the input scale (a vector), so
    W = w * input_scale[0] * weight_scale[0] / s."""
    for key in [k for k in P if k.endswith(".weight_scale")]:
        base = key[: -len("weight_scale")]
        s = P.get(base + "smooth_scale", P[base + "input_scale"]).reshape(-1)
        P[base + "weight"] = P[base + "weight"][0] * (P[base + "input_scale"].reshape(-1)[0] * P[key][0]) / s
    return P


def forward64(sd, cfg, x, t, y, y_mask, kv_range, slice_point=0, uncond=False, dt_factor=None):
    """Batch-1 forward: x (1, C, T, H, W), t (1, dn), y (dn, L, Cc), y_mask (dn, L), kv_range [(s, e)] absolute
    over the tokens of this forward only (requires slice_point chunks' keys to be absent, i.e. kv >= slice_point*ctn).
    fp8 checkpoints: their linears in float64 without the activation rounding (fp8_as_linear).
    """
    P = fp8_as_linear({k: v.to(f64) for k, v in sd.items()})
    h, nh, g, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    eps, p = cfg.layernorm_epsilon, cfg.patch_size
    one = 1.0 if cfg.apply_layernorm_1p else 0.0
    x = x.to(f64) * cfg.x_rescale_factor
    if cfg.half_channel_vae:
        x = torch.cat([x, x], 1)
    _, C, T, H, W = x.shape
    Hp, Wp, dn = H // p, W // p, t.shape[1]
    # patchify: token (t, y, x) features (C, 1, p, p) flattened, projected by the conv weight
    patches = x[0].reshape(C, T, Hp, p, Wp, p).permute(1, 2, 4, 0, 3, 5).reshape(T * Hp * Wp, C * p * p)
    hs = patches @ P["x_embedder.weight"].reshape(h, -1).T
    S, ctn = hs.shape[0], hs.shape[0] // dn

    # timestep: (t*f)*1000, [cos, sin]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=f64) / 128)

    def temb(tv):
        a = tv[:, None] * freqs[None] * 1000
        e = torch.cat([a.cos(), a.sin()], -1)
        z = e @ P["t_embedder.mlp.0.weight"].T + P["t_embedder.mlp.0.bias"]
        z = z * torch.sigmoid(z)
        return z @ P["t_embedder.mlp.2.weight"].T + P["t_embedder.mlp.2.bias"]

    te = temb(t[0].to(f64))
    if cfg.distill:
        te = te + temb(torch.full((dn,), float(dt_factor), dtype=f64))
    row = P["y_embedder.null_caption_embedding"][-1 if uncond else -2]
    cond = te + (row @ P["y_embedder.y_proj_adaln.0.weight"].T + P["y_embedder.y_proj_adaln.0.bias"])  # (dn, c)

    # captions: valid tokens only, per chunk
    caps = []
    for i in range(dn):
        yi = y[i][y_mask[i].bool()].to(f64)
        z = yi @ P["y_embedder.y_proj_xattn.0.weight"].T + P["y_embedder.y_proj_xattn.0.bias"]
        caps.append(z * torch.sigmoid(z))

    nb = P["rope.bands"].shape[0]
    t_first = (T // dn) * slice_point
    sin, cos = _rope_table(T + t_first, Hp, Wp, P["rope.bands"], t_first)
    origin = slice_point * ctn
    hpg = nh // g
    for li in range(cfg.num_layers):
        L = lambda n: P[f"videodit_blocks.layers.{li}.{n}"]  # noqa: E731
        res = hs
        a = _ln(hs, L("self_attention.linear_qkv.layer_norm.weight"), L("self_attention.linear_qkv.layer_norm.bias"), eps)
        q = (a @ L("self_attention.linear_qkv.q.weight").T).view(S, nh, d)
        k = (a @ L("self_attention.linear_qkv.k.weight").T).view(S, g, d)
        v = (a @ L("self_attention.linear_qkv.v.weight").T).view(S, g, d)
        q = _rotate(_ln(q, L("self_attention.q_layernorm.weight") + one, L("self_attention.q_layernorm.bias"), eps), sin, cos)
        k = _rotate(_ln(k, L("self_attention.k_layernorm.weight") + one, L("self_attention.k_layernorm.bias"), eps), sin, cos)
        core = torch.zeros(S, nh, d, dtype=f64)
        for i, (ks, ke) in enumerate(kv_range):
            core[i * ctn:(i + 1) * ctn] = _attn(q[i * ctn:(i + 1) * ctn], k[ks - origin:ke - origin], v[ks - origin:ke - origin], hpg)
        qx = (a @ L("self_attention.linear_qkv.qx.weight").T).view(S, nh, d)
        qx = _ln(qx, L("self_attention.q_layernorm_xattn.weight") + one, L("self_attention.q_layernorm_xattn.bias"), eps)
        Wkv = L("self_attention.linear_kv_xattn.weight").view(g, 2, d, -1)  # rows [K_g; V_g] per group
        xat = torch.zeros(S, nh, d, dtype=f64)
        for i in range(dn):
            kx = torch.einsum("tc,gdc->tgd", caps[i], Wkv[:, 0])
            vx = torch.einsum("tc,gdc->tgd", caps[i], Wkv[:, 1])
            kx = _ln(kx, L("self_attention.k_layernorm_xattn.weight") + one, L("self_attention.k_layernorm_xattn.bias"), eps)
            xat[i * ctn:(i + 1) * ctn] = _attn(qx[i * ctn:(i + 1) * ctn], kx, vx, hpg)
        # linear_proj input: 8 slices, each [self heads s*nh/8.., cross heads s*nh/8..]
        hs8 = nh // 8
        parts = []
        for s_ in range(8):
            parts.append(core[:, s_ * hs8:(s_ + 1) * hs8].reshape(S, -1))
            parts.append(xat[:, s_ * hs8:(s_ + 1) * hs8].reshape(S, -1))
        o = torch.cat(parts, -1) @ L("self_attention.linear_proj.weight").T
        gate = torch.tanh((cond * torch.sigmoid(cond)) @ L("ada_modulate_layer.proj.0.weight").T + L("ada_modulate_layer.proj.0.bias"))
        g_msa, g_mlp = gate[:, :h], gate[:, h:]
        tok_chunk = torch.arange(S) // ctn
        o = o * g_msa[tok_chunk]
        hs = res + _ln(o, L("self_attn_post_norm.weight") + one, L("self_attn_post_norm.bias"), eps)
        res = hs
        m = _ln(hs, L("mlp.layer_norm.weight"), L("mlp.layer_norm.bias"), eps) @ L("mlp.linear_fc1.weight").T
        if cfg.gated_linear_unit:
            a1, a2 = m[:, : cfg.ffn_hidden_size], m[:, cfg.ffn_hidden_size:]
            m = a1 * torch.sigmoid(a1) * a2
        else:
            m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))
        m = (m @ L("mlp.linear_fc2.weight").T) * g_mlp[tok_chunk]
        hs = res + _ln(m, L("mlp_post_norm.weight") + one, L("mlp_post_norm.bias"), eps)
    hs = _ln(hs, P["videodit_blocks.final_layernorm.weight"] + one, P["videodit_blocks.final_layernorm.bias"], eps)
    out = hs @ P["final_linear.linear.weight"].T  # (S, p*p*C) ordered (pT, pH, pW, C)
    Cout = out.shape[-1] // (p * p)
    out = out.view(T, Hp, Wp, p, p, Cout).permute(5, 0, 1, 3, 2, 4).reshape(1, Cout, T, H, W)
    if cfg.half_channel_vae:
        out = out[:, : Cout // 2]
    return out / cfg.x_rescale_factor
