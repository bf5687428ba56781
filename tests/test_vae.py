"""MAGI-1 VAE: layout vs the official checkpoint, float64 recomputation, T==1 rules, tiling, loader."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from magi_core.vae import (SCALE_FACTOR, VAE_PRESETS, VAEConfig, ViTVAE, load_vae, read_vae_config, save_vae,
                           tiled_decode, tiled_encode)
from magi_core.vae.tiling import plan_axis

TINY = VAE_PRESETS["tiny"]


def randomize(model, seed=0):
    """Every parameter non-trivial (LayerNorm affines too), activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif p.ndim == 1:
                p.copy_(0.1 * r)
            elif name.endswith(("pos_embed", "cls_token")):
                p.copy_(0.5 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))
    return model


@pytest.fixture(scope="module")
def vae():
    return randomize(ViTVAE(TINY)).eval()


def video(shape, seed=1):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- layout and config

def test_official_layout():
    with torch.device("meta"):
        sd = ViTVAE(VAEConfig()).state_dict()
    expect = {
        "encoder.patch_embed.proj.weight": (1024, 3, 4, 8, 8), "encoder.patch_embed.proj.bias": (1024,),
        "encoder.cls_token": (1, 1, 1024), "encoder.pos_embed": (1, 4097, 1024),
        "encoder.norm.weight": (1024,), "encoder.last_layer.weight": (32, 1024), "encoder.last_layer.bias": (32,),
        "decoder.proj_in.weight": (1024, 16), "decoder.proj_in.bias": (1024,),
        "decoder.cls_token": (1, 1, 1024), "decoder.pos_embed": (1, 4097, 1024), "decoder.norm.bias": (1024,),
        "decoder.last_layer.weight": (3, 4, 3, 3, 3), "decoder.last_layer.bias": (3,),
    }
    block = {"attn.qkv.weight": (3072, 1024), "attn.qkv.bias": (3072,), "attn.proj.weight": (1024, 1024),
             "attn.proj.bias": (1024,), "norm2.weight": (1024,), "norm2.bias": (1024,),
             "mlp.fc1.weight": (4096, 1024), "mlp.fc1.bias": (4096,), "mlp.fc2.weight": (1024, 4096),
             "mlp.fc2.bias": (1024,)}
    for side in ("encoder", "decoder"):
        for i in range(24):
            expect.update({f"{side}.blocks.{i}.{k}": s for k, s in block.items()})
        expect[f"{side}.norm.weight"] = expect[f"{side}.norm.bias"] = (1024,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expect
    n = sum(v.numel() for v in sd.values())
    assert 610e6 < n < 618e6  # spec: about 614 M


def test_config_json():
    raw = {"_class_name": "ViTVAE", "model_type": "vit",
           "ddconfig": {"embed_dim": 1024, "depth": 24, "qk_scale": None, "drop_rate": 0.0}}
    cfg = VAEConfig.from_official(raw)
    assert cfg == VAEConfig()  # documented values are the defaults; ignored keys accepted
    assert (cfg.patch_size, cfg.patch_length, cfg.z_chans, cfg.num_heads, cfg.pos_grid) == (8, 4, 16, 16, (4, 32, 32))
    assert VAEConfig.from_official(TINY.to_official()) == TINY
    with pytest.raises(ValueError, match="unknown VAE ddconfig keys.*bogus"):
        VAEConfig.from_official({"ddconfig": {"bogus": 1}})
    with pytest.raises(ValueError, match="_class_name"):
        VAEConfig.from_official({"_class_name": "AutoencoderKL", "ddconfig": {}})
    with pytest.raises(ValueError, match="vit_ncthw"):
        VAEConfig.from_official({"model_type": "vit_ncthw", "ddconfig": {}})
    with pytest.raises(ValueError, match="use_rope"):
        VAEConfig(use_rope=True)


# ---------------------------------------------------------------- float64 recomputation from the formulas

def ln64(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def block64(x, sd, heads):
    B, N, C = x.shape
    d = C // heads
    qkv = (x @ sd["attn.qkv.weight"].T + sd["attn.qkv.bias"]).reshape(B, N, 3, heads, d)
    mu = qkv.mean(-1, keepdim=True)
    std = ((qkv - mu) ** 2).mean(-1, keepdim=True).sqrt()
    qkv = (qkv - mu) / (std + 1e-5)  # q, k and v, eps on the std
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    a = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d), dim=-1)
    o = torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(B, N, C)
    x = x + o @ sd["attn.proj.weight"].T + sd["attn.proj.bias"]
    h = ln64(x, sd["norm2.weight"], sd["norm2.bias"]) @ sd["mlp.fc1.weight"].T + sd["mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd["mlp.fc2.weight"].T + sd["mlp.fc2.bias"]


def interp_matrix(n_in, n_out):
    """1-D linear interpolation, align_corners=False, as an (n_out, n_in) matrix."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1, lam = min(i0 + 1, n_in - 1), src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


def trunk64(tok, sd, side, grid, cfg):
    B = tok.shape[0]
    pos = sd[f"{side}.pos_embed"][0]
    g0 = cfg.pos_grid
    grid_pos = pos[1:].reshape(*g0, -1)
    grid_pos = torch.einsum("at,bh,cw,thwe->abce", interp_matrix(g0[0], grid[0]), interp_matrix(g0[1], grid[1]),
                            interp_matrix(g0[2], grid[2]), grid_pos).reshape(-1, pos.shape[-1])
    x = torch.cat([sd[f"{side}.cls_token"].expand(B, -1, -1), tok], 1) + torch.cat([pos[:1], grid_pos])[None]
    for i in range(cfg.depth):
        pre = f"{side}.blocks.{i}."
        x = block64(x, {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, cfg.num_heads)
    return ln64(x, sd[f"{side}.norm.weight"], sd[f"{side}.norm.bias"])[:, 1:]


def encode64(x, sd, cfg):
    B, C, T, H, W = x.shape
    pl, p = cfg.patch_length, cfg.patch_size
    g = (T // pl, H // p, W // p)
    patches = x.reshape(B, C, g[0], pl, g[1], p, g[2], p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * pl * p * p)
    w = sd["encoder.patch_embed.proj.weight"]
    tok = patches @ w.reshape(w.shape[0], -1).T + sd["encoder.patch_embed.proj.bias"]
    out = trunk64(tok, sd, "encoder", g, cfg) @ sd["encoder.last_layer.weight"].T + sd["encoder.last_layer.bias"]
    return out.reshape(B, *g, -1).permute(0, 4, 1, 2, 3)[:, : cfg.z_chans]


def decode64(z, sd, cfg):
    B, C, T, H, W = z.shape
    pl, p, U = cfg.patch_length, cfg.patch_size, cfg.unpatch_channels
    tok = z.permute(0, 2, 3, 4, 1).reshape(B, -1, C) @ sd["decoder.proj_in.weight"].T + sd["decoder.proj_in.bias"]
    feat = trunk64(tok, sd, "decoder", (T, H, W), cfg).reshape(B, T, H, W, -1)
    pix = torch.zeros(B, U, T * pl, H * p, W * p, dtype=torch.float64)
    for a in range(pl):  # token feature ((a*p + b)*p + c)*U + u -> pixel (t*pl + a, h*p + b, w*p + c), channel u
        for b in range(p):
            for c in range(p):
                f0 = ((a * p + b) * p + c) * U
                pix[:, :, a::pl, b::p, c::p] = feat[..., f0:f0 + U].permute(0, 4, 1, 2, 3)
    return F.conv3d(pix, sd["decoder.last_layer.weight"], sd["decoder.last_layer.bias"], padding=1)


def test_block_float64(vae):
    blk = vae.encoder.blocks[1]
    x = torch.randn(2, 37, TINY.embed_dim, generator=torch.Generator().manual_seed(3))
    sd = {k: v.double() for k, v in blk.state_dict().items()}
    ref = block64(x.double(), sd, TINY.num_heads)
    with torch.no_grad():
        out = blk(x)
    assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()


def test_encoder_decoder_float64(vae):
    """Whole forward from the spec formulas, on a token grid that forces the pos-embed resize (3x6x10 vs 2x8x8)."""
    sd = {k: v.double() for k, v in vae.state_dict().items()}
    x = video((1, 3, 12, 48, 80))
    ref = encode64(x.double(), sd, TINY)
    z = vae.encode(x)
    assert z.shape == (1, 16, 3, 6, 10)
    assert (z.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    zr = torch.randn(1, 16, 3, 6, 10, generator=torch.Generator().manual_seed(4))
    ref = decode64(zr.double(), sd, TINY)
    y = vae.decode(zr)
    assert y.shape == (1, 3, 12, 48, 80)
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()


# ---------------------------------------------------------------- T == 1 rules and shapes

def test_shapes_and_single_frame_rules(vae):
    x = video((2, 3, 9, 64, 32))
    z = vae.encode(x)
    assert z.shape == (2, 16, 2, 8, 4)  # 9 frames: the 9th is dropped
    assert torch.equal(z, vae.encode(x[:, :, :8]))
    img = x[:, :, :1]
    z1 = vae.encode(img)
    assert z1.shape == (2, 16, 1, 8, 4)
    assert torch.allclose(z1, vae.encode(img.repeat(1, 1, 4, 1, 1)), atol=1e-6)  # repeated to 4 frames
    y = vae.decode(z)
    assert y.shape == (2, 3, 8, 64, 32)
    y1 = vae.decode(z1)
    assert y1.shape == (2, 3, 1, 64, 32)  # only the first of 4 decoded frames
    assert torch.allclose(y1, vae.decoder(z1)[:, :, :1], atol=1e-6)


# ---------------------------------------------------------------- tiling

def test_reference_tile_plans():
    """Tile counts of the reference (`tile_parallel.py`, `video_process.py`) at 720x720, fps 24."""
    sp = plan_axis(90, 32, 24, lambda n: 8 * n, 64)  # decode, latent units
    assert [t.start for t in sp.tiles] == [0, 24, 48, 72] and sp.total == 720
    assert [t.keep for t in sp.tiles] == [192, 192, 192, 144]
    enc = plan_axis(720, 256, 192, lambda n: n // 8, 8)
    assert len(enc.tiles) == 4 and enc.total == 90
    t_enc = plan_axis(32, 12, 12, lambda n: 1 if n == 1 else n // 4, 0)  # 32-frame prefix
    assert [t.size for t in t_enc.tiles] == [12, 12, 8] and t_enc.total == 8
    t_dec = plan_axis(6, 3, 3, lambda n: 1 if n == 1 else 4 * n, 0)
    assert len(t_dec.tiles) == 2 and t_dec.total == 24  # 6-latent chunk: 2 x 4 x 4 = 32 tiles
    assert plan_axis(4, 3, 3, lambda n: 1 if n == 1 else 4 * n, 0).total == 13  # v2v first chunk: 13 frames


def test_temporal_overlap_keeps_every_frame():
    """With temporal tiles overlapping, each latent still decodes to 4 frames, whatever the overlap (up to the
    tile's length - 1, the most check_temporal_overlap allows): the kept parts add up to 4 T'. A stride of one
    latent used to keep 1 frame per tile (the 1-latent-tile rule), 15 frames of a 6-latent chunk instead of 24."""
    def t_out(n):
        return 1 if n == 1 else 4 * n

    for t_tile in (2, 3, 4):  # fps 16, 24, 32
        for overlap in range(1, t_tile):
            for T in range(2, 10):
                plan = plan_axis(T, t_tile, t_tile - overlap, t_out, 4 * overlap, minimal=True)
                assert plan.total == 4 * T, (t_tile, overlap, T)
                for t in plan.tiles:  # each tile's kept frames are those of its own latents
                    assert t.offset == 4 * t.start, (t_tile, overlap, T, t)
                assert all(t.keep == 4 * (t_tile - overlap) for t in plan.tiles[:-1])
                assert plan.tiles[-1].start + plan.tiles[-1].size == T  # the last tile reaches the end


def test_single_tile_equals_untiled(vae):
    x = video((1, 3, 8, 64, 64))  # one tile needs size <= stride (96 px here), as in the reference
    z = tiled_encode(vae, x, fps=16, tile_size=128)
    assert torch.equal(z, vae.encode(x) * SCALE_FACTOR)
    y = tiled_decode(vae, z, fps=16, tile_size=128)
    assert torch.equal(y, vae.decode(z / SCALE_FACTOR))


def blend_rows(a, b, dim, extent):
    """The spec's ramp on b's first rows: b[y] = a[-e + y] * (1 - y/e) + b[y] * (y/e)."""
    e = min(a.shape[dim], b.shape[dim], extent)
    for y in range(e):
        b.select(dim, y).copy_(a.select(dim, a.shape[dim] - e + y) * (1 - y / e) + b.select(dim, y) * (y / e))


def spec_tiles(fn, x, tile, stride, t_tile):
    """All tiles of official `inference/infra/parallelism/tile_parallel.py`:
    (f, i, j) -> fn(x[f*t_tile.., i*stride.., j*stride..])."""
    nt, nh, nw = (math.ceil(x.shape[2] / t_tile), math.ceil(x.shape[3] / stride), math.ceil(x.shape[4] / stride))
    return {(f, i, j): fn(x[:, :, f * t_tile:(f + 1) * t_tile, i * stride:i * stride + tile, j * stride:j * stride + tile])
            for f in range(nt) for i in range(nh) for j in range(nw)}


def spec_blend(raw, extent, keep, t_keep, in_place):
    """Blend in raster order (in place, or each tile on a clone), crop, concatenate."""
    raw = {k: t.clone() for k, t in raw.items()}
    nt, nh, nw = (max(k[d] for k in raw) + 1 for d in range(3))
    crops = {}
    for (f, i, j), t in raw.items():
        t = t if in_place else t.clone()
        if i > 0:
            blend_rows(raw[(f, i - 1, j)], t, 3, extent)
        if j > 0:
            blend_rows(raw[(f, i, j - 1)], t, 4, extent)
        crops[(f, i, j)] = t[:, :, :t_keep, :keep, :keep]
    return torch.cat([torch.cat([torch.cat([crops[(f, i, j)] for j in range(nw)], 4) for i in range(nh)], 3)
                      for f in range(nt)], 2)


def test_tiled_matches_spec_blending(vae):
    """2x3 spatial and 2 temporal tiles, uneven right edge: in-place chained encode, clone-based decode."""
    x = video((1, 3, 8, 96, 120))
    z = tiled_encode(vae, x, fps=8, tile_size=64)
    raw = spec_tiles(vae.encode, x, 64, 48, 4)
    assert z.shape == (1, 16, 2, 12, 15)
    assert torch.allclose(z, spec_blend(raw, 2, 6, 1, in_place=True) * SCALE_FACTOR, atol=1e-6, rtol=1e-6)
    # the two blend semantics really differ (at tile corners)
    assert not torch.allclose(z, spec_blend(raw, 2, 6, 1, in_place=False) * SCALE_FACTOR, atol=1e-4)
    z = torch.cat([z, z.flip(2)], dim=2)
    y = tiled_decode(vae, z, fps=16, tile_size=64)
    ref = spec_blend(spec_tiles(vae.decode, z / SCALE_FACTOR, 8, 6, 2), 16, 48, 8, in_place=False)
    assert y.shape == (1, 3, 16, 96, 120)
    assert torch.allclose(y, ref, atol=1e-6, rtol=1e-6)
    # fps 8..15: 1-latent temporal tiles, each decoded to a single frame (reference quirk, kept)
    assert tiled_decode(vae, z[..., :6, :6], fps=8, tile_size=64).shape == (1, 3, 4, 48, 48)


@pytest.mark.parametrize("temporal_overlap", [0, 1])
def test_batched_tiles_equal_one_at_a_time(vae, temporal_overlap):
    """tile_batch stacks same-sized tiles of a slab into one VAE call; each tile still sees only itself (the ViT
    attends within a batch element), so encode and decode equal the one-tile-at-a-time result (float64: any
    difference is GEMM summation order), uneven edge tiles, 2 images and the in-place temporal blend included."""
    v = ViTVAE(TINY).double()
    v.load_state_dict(vae.state_dict())
    x = video((2, 3, 8, 96, 120)).double()
    calls = []
    encode = v.encode
    v.encode = lambda t: calls.append(t.shape[0]) or encode(t)
    z1 = tiled_encode(v, x, fps=8, tile_size=64)
    n_one = len(calls)
    calls.clear()
    z4 = tiled_encode(v, x, fps=8, tile_size=64, tile_batch=4)
    # per temporal slab 2x3 tiles of four sizes (64|48 high, 64|64|24 wide): groups of 2, 1, 2, 1 tiles of 2 videos
    assert n_one == 12 and calls == [4, 2, 4, 2] * 2
    assert torch.allclose(z1, z4, rtol=0, atol=1e-12)
    z = torch.cat([z1, z1.flip(2)], dim=2)
    kw = dict(fps=16, tile_size=64, temporal_overlap=temporal_overlap)
    y1, y3 = tiled_decode(v, z, **kw), tiled_decode(v, z, tile_batch=3, **kw)
    assert y1.shape == y3.shape and torch.allclose(y1, y3, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="tile_batch must be an int >= 1"):
        tiled_decode(v, z, tile_batch=0)


def local_vae():
    """Tiny VAE whose blocks are identities and pos-embeds constant: every token is decoded on its own."""
    v = randomize(ViTVAE(TINY)).eval()
    with torch.no_grad():
        for side in (v.encoder, v.decoder):
            for blk in side.blocks:
                for p in (blk.attn.proj.weight, blk.attn.proj.bias, blk.mlp.fc2.weight, blk.mlp.fc2.bias):
                    p.zero_()
            side.pos_embed.copy_(side.pos_embed[:, :1].expand_as(side.pos_embed))
    return v


def test_tiled_close_to_untiled_with_overlap():
    v = local_vae()
    x = video((1, 3, 8, 112, 112))
    z = tiled_encode(v, x, fps=16, tile_size=64)
    zu = v.encode(x) * SCALE_FACTOR
    assert torch.allclose(z, zu, atol=1e-5)
    y = tiled_decode(v, zu, fps=16, tile_size=64)
    yu = v.decode(zu / SCALE_FACTOR)
    err = (y - yu).abs()
    # only pixels near tile borders (the Conv3d's zero padding) differ; the reference's copy-based blend
    # lets the left neighbour's raw top-border rows through at tile corners
    assert (err > 1e-4).float().mean() < 0.1
    assert err.mean() < 0.02 * yu.abs().mean()


@pytest.mark.parametrize("overlap", [1, 2])
def test_temporal_overlap_removes_seam(overlap):
    """Constant latent, per-token decoder, temporal box filter: tile edges dip (zero padding) without overlap."""
    v = local_vae()
    c = TINY.patch_size * TINY.patch_size  # features per frame of a token
    with torch.no_grad():
        dec = v.decoder
        for t in (dec.proj_in.weight, dec.proj_in.bias, dec.norm.weight, dec.norm.bias):
            for a in range(1, TINY.patch_length):  # same pixels for the 4 frames of a token
                t[a * c:(a + 1) * c] = t[:c]
        v.decoder.pos_embed.zero_()
        v.decoder.last_layer.weight.zero_()
        v.decoder.last_layer.weight[:, :, :, 1, 1] = 1 / 3
        v.decoder.last_layer.bias.zero_()
    z = torch.randn(1, 16, 1, 8, 8).expand(1, 16, 6, 8, 8) * SCALE_FACTOR

    def max_jump(y):
        return (y[:, :, 2:-1] - y[:, :, 1:-2]).abs().amax()  # interior frames only

    plain = tiled_decode(v, z, fps=24, tile_size=64)
    smooth = tiled_decode(v, z, fps=24, tile_size=64, temporal_overlap=overlap)
    assert plain.shape == smooth.shape == (1, 3, 24, 64, 64)
    level = plain[:, :, 5].abs().amax()
    assert max_jump(plain) > 0.2 * level  # the seam every 12 frames
    assert max_jump(smooth) < 0.3 * max_jump(plain)
    untiled = v.decode(z / SCALE_FACTOR)
    assert (smooth - untiled)[:, :, 1:-1].abs().amax() < 0.3 * (plain - untiled)[:, :, 1:-1].abs().amax()
    assert torch.equal(tiled_decode(v, z, fps=24, tile_size=64, temporal_overlap=0), plain)


def test_callback(vae):
    seen = []
    z = tiled_encode(vae, video((1, 3, 17, 48, 96)), fps=16, tile_size=64, callback=lambda d, n: seen.append((d, n)))
    assert z.shape == (1, 16, 5, 6, 12)  # temporal tiles of 8 + 8 + 1 frames -> 2 + 2 + 1 latents
    assert seen == [(k, 6) for k in range(1, 7)]


# ---------------------------------------------------------------- errors

def test_input_errors(vae):
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        vae.encode(torch.zeros(1, 4, 4, 64, 64))
    with pytest.raises(ValueError, match="x / 127.5 - 1"):
        vae.encode(torch.zeros(1, 3, 4, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(torch.zeros(1, 3, 4, 60, 64))
    with pytest.raises(ValueError, match="1 or at least 4 frames"):
        vae.encode(torch.zeros(1, 3, 2, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 16, T', H', W'\)"):
        vae.decode(torch.zeros(1, 8, 2, 8, 8))
    z = torch.zeros(1, 16, 2, 8, 8)
    with pytest.raises(ValueError, match="fps >= 8"):
        tiled_decode(vae, z, fps=6)
    with pytest.raises(ValueError, match="multiple of 8"):
        tiled_decode(vae, z, tile_size=100)
    with pytest.raises(ValueError, match="tile_overlap"):
        tiled_decode(vae, z, tile_overlap=1.0)
    with pytest.raises(ValueError, match="multiple of 8 px"):
        tiled_decode(vae, z, tile_overlap=0.3)
    with pytest.raises(ValueError, match=r"temporal_overlap must be an int in \[0, 2\] .* temporal tiles are 3 latent "
                                         r"frames \(12 frames, half of 24 frames per second\); .* raise tile_frames"):
        tiled_decode(vae, z, temporal_overlap=3)
    assert tiled_decode(vae, z, temporal_overlap=3, tile_frames=16).shape == tiled_decode(vae, z).shape  # as it says
    with pytest.raises(ValueError, match="last temporal VAE tile of 2 frames .* use 12, 13 or 16 frames"):
        tiled_encode(vae, torch.zeros(1, 3, 14, 64, 64), fps=24)


# ---------------------------------------------------------------- checkpoint

def test_save_load_official_layout(vae, tmp_path):
    d = save_vae(vae, tmp_path / "vae")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    raw = json.loads((d / "config.json").read_text())
    assert raw["_class_name"] == "ViTVAE" and raw["ddconfig"]["embed_dim"] == 256
    assert read_vae_config(d) == TINY
    loaded = load_vae(d, dtype=torch.float32)
    ref, got = vae.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = video((1, 3, 4, 64, 64))
    assert torch.equal(loaded.encode(x), vae.encode(x))
    assert load_vae(d).dtype == torch.bfloat16  # default dtype, as the reference casts
    # single file: config next to it, explicit preset, "<stem>.json"
    single = tmp_path / "single"
    single.mkdir()
    sd = load_file(str(d / "diffusion_pytorch_model.safetensors"))
    save_file(sd, str(single / "magi_vae.safetensors"))
    assert load_vae(single / "magi_vae.safetensors", config="tiny", dtype=torch.float32).cfg == TINY
    with pytest.raises(ValueError, match="missing keys"):  # falls back to the full-size preset
        load_vae(single / "magi_vae.safetensors")
    (single / "magi_vae.json").write_text(json.dumps(TINY.to_official()))
    assert torch.equal(load_vae(single / "magi_vae.safetensors", dtype=torch.float32).decoder.pos_embed,
                       vae.decoder.pos_embed)


def test_strict_load_errors(vae, tmp_path):
    d = save_vae(vae, tmp_path / "vae")
    wpath = d / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(wpath))

    def expect(bad, *patterns):
        save_file(bad, str(wpath))
        with pytest.raises(ValueError) as e:
            load_vae(d)
        for p in patterns:
            assert p in str(e.value)

    expect({k: v for k, v in sd.items() if k != "decoder.blocks.1.mlp.fc1.bias"},
           "missing keys", "decoder.blocks.1.mlp.fc1.bias")
    expect({**sd, "encoder.blocks.0.norm1.weight": torch.ones(256)}, "unexpected keys", "encoder.blocks.0.norm1.weight")
    expect({**sd, "encoder.cls_token": torch.zeros(1, 1, 128)}, "wrong shapes", "encoder.cls_token (1, 1, 128)")
    wpath.unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_vae(d)


# ---------------------------------------------------------------- GPU (run with -m gpu)

@pytest.mark.gpu
def test_cuda_bf16_close_to_fp32(vae):
    vb = ViTVAE(TINY).eval()
    vb.load_state_dict(vae.state_dict())
    vb = vb.to("cuda", torch.bfloat16)
    x = video((1, 3, 16, 112, 120))
    z32 = tiled_encode(vae, x, fps=16, tile_size=64)
    zb = tiled_encode(vb, x.cuda(), fps=16, tile_size=64)
    assert zb.dtype == torch.bfloat16 and zb.is_cuda
    assert (zb.float().cpu() - z32).abs().max() < 0.05 * z32.abs().max()
    y32 = tiled_decode(vae, z32, fps=16, tile_size=64)
    yb = tiled_decode(vb, z32.cuda(), fps=16, tile_size=64, temporal_overlap=1)
    assert yb.dtype == torch.bfloat16
    yb0 = tiled_decode(vb, z32, fps=16, tile_size=64, out_device="cpu")  # tiles go to the GPU one by one
    assert yb0.device.type == "cpu"
    assert (yb0.float() - y32).abs().max() < 0.05 * y32.abs().max()


@pytest.mark.gpu
def test_official_checkpoint_roundtrip(shared_file):
    """Set MAGI_VAE_PATH to ckpt/vae of sand-ai/MAGI-1."""
    path = os.environ.get("MAGI_VAE_PATH")
    if not path:
        pytest.skip("set MAGI_VAE_PATH to the official ckpt/vae directory")
    from magi_core.video import read_image, resize, to_vae_input

    img = resize(read_image(shared_file("image.jpeg")), 256, 320, "stretch")
    x = to_vae_input(img, device="cuda")
    v = load_vae(path, device="cuda")
    z = tiled_encode(v, x)
    assert z.shape == (1, 16, 1, 32, 40)
    y = tiled_decode(v, z.float()).float().clamp(-1, 1)
    mse = ((y - x) ** 2).mean().item() / 4  # in [0, 1] units
    assert 10 * math.log10(1 / mse) > 24
