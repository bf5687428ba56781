"""MAGI latents in ComfyUI's LATENT dict, and decoding them (no ComfyUI import).

LATENT = {"samples": (1, 16, T, H/8, W/8) fp32 CPU, ...} plus MAGI keys that native nodes ignore:
- "magi_prefix_frames": pixel frames a prefix latent stands for (MAGI VAE Encode; 1 = image-to-video);
  the prefix also carries the "magi_fps" it was encoded for;
- "magi_chunks": latent frames of each finished chunk, in order (MAGI Sampler); decoding chunk by chunk
  gives the reference's frame counts (a chunk's last VAE tile may be short);
- "magi_fps": the sampler's fps (temporal VAE tiles are fps // 2 frames);
- "magi_decoded": {"key": ..., "frames": (N, H, W, 3), "of": fingerprint of the samples} frames the sampler
  already decoded for its previews, reused by MAGI VAE Decode only for a latent with the same fingerprint (the
  same values) and the same VAE and tile settings. Native nodes copy these keys into the LATENT they make
  (LatentMultiply keeps them beside its new "samples"), so the keys alone prove nothing about the samples.
"""
from __future__ import annotations

import hashlib

import torch

from magi_core.pipeline import decode_chunk, prefix_latent_count

DEFAULT_TILING = dict(tile_size=256, tile_overlap=0.25, tile_frames=0, temporal_overlap=0)


def tiling_kwargs(tiling: dict, fps: int) -> dict:
    """Widget values -> magi_core tiling kwargs (tile_frames 0 = fps // 2, the reference)."""
    kw = dict(tiling)
    if not kw.get("tile_frames"):
        kw["tile_frames"] = fps // 2
    if "temporal_overlap" in kw:
        kw["temporal_overlap"] = int(kw["temporal_overlap"])
    return kw


def decode_key(vae_key, tiling: dict, fps: int) -> tuple:
    return (vae_key, tuple(sorted(tiling_kwargs(tiling, fps).items())), fps)


def fingerprint(x: torch.Tensor) -> tuple:
    """What decides a decode: shape, dtype and every byte of the latent (blake2b: 58 ms for the 12 MB latent of 96
    frames at 720x720 on a busy 2-core CPU). An identity check would not do: ComfyUI runs nodes in inference
    mode, where torch does not count in-place changes, and an equal latent (LatentMultiply x1) may reuse them."""
    t = x.detach().cpu().contiguous()
    digest = hashlib.blake2b(t.view(torch.uint8).reshape(-1).numpy(), digest_size=16).hexdigest()
    return tuple(t.shape), str(t.dtype), digest


def prefix_from_latent(latent: dict | None, width: int, height: int, channels: int, fps: int = 24):
    """-> (prefix latents (1, C, P, h, w) or None, prefix pixel frames). Clear errors for a wrong prefix."""
    if latent is None:
        return None, 0
    x = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(x) or x.dim() != 5:
        shape = None if x is None else tuple(getattr(x, "shape", ()))
        raise ValueError(f"prefix must be a MAGI video latent (1, {channels}, frames, h, w) from MAGI VAE Encode, "
                         f"got {shape}")
    if "magi_prefix_frames" not in latent and "magi_chunks" not in latent:
        raise ValueError(f"the prefix latent {tuple(x.shape)} was not made by MAGI VAE Encode (nor by a MAGI "
                         "sampler): a latent from another node (e.g. EmptyHunyuanLatentVideo, another model's VAE) "
                         "is not a MAGI-1 video. Encode the start image or video with MAGI VAE Encode and connect "
                         "its output to the prefix input")
    if x.shape[0] != 1:
        raise ValueError(f"prefix latent has batch {x.shape[0]}; MAGI-1 continues one video at a time (batch 1)")
    if x.shape[1] != channels:
        raise ValueError(f"prefix latent has {x.shape[1]} channels, the DiT expects {channels}: encode the prefix "
                         "with the MAGI-1 VAE (MAGI VAE Encode)")
    h, w = x.shape[3] * 8, x.shape[4] * 8
    if (h, w) != (height, width):
        raise ValueError(f"prefix latent is {w}x{h} but the sampler makes {width}x{height}: set the same width "
                         "and height on MAGI VAE Encode and on the sampler")
    encoded_fps = latent.get("magi_fps")
    if encoded_fps is not None and int(encoded_fps) != fps:
        raise ValueError(f"the prefix was encoded for {encoded_fps} fps but the sampler makes {fps} fps: set the same "
                         "fps on MAGI VAE Encode and on the sampler (the VAE's time tiles are fps // 2 frames)")
    P = x.shape[2]
    frames = int(latent.get("magi_prefix_frames") or (1 if P == 1 else 4 * P))
    if prefix_latent_count(frames, fps) != P:
        raise ValueError(f"prefix latent has {P} frames but says it stands for {frames} pixel frames, which give "
                         f"{prefix_latent_count(frames, fps)} at {fps} fps: encode it with tile_frames 0 (fps // 2)")
    return x.float(), frames


def video_latent(chunks: list, fps: int, decoded: dict | None = None) -> dict:
    """The sampler's LATENT output from its finished chunks' latents."""
    if not chunks:
        raise ValueError("no chunk was generated")
    out = {"samples": torch.cat([c.float().cpu() for c in chunks], dim=2),
           "magi_chunks": [int(c.shape[2]) for c in chunks], "magi_fps": int(fps)}
    if decoded is not None:
        out["magi_decoded"] = dict(decoded, of=fingerprint(out["samples"]))
    return out


def missing_keys_note(latent: dict) -> str | None:
    """What decoding assumes for a latent that lost the sampler's keys (native Load Latent keeps only the
    samples), or None."""
    if not isinstance(latent, dict) or "magi_fps" in latent:
        return None
    return ("this latent carries no MAGI-1 fps or chunk sizes (native Load Latent and some other nodes drop them): "
            "it is decoded at 24 fps in one piece. A video sampled at another fps, or with a video prefix, then "
            "gets a different frame count; decode the sampler's own output for its exact frames")


def split_chunks(latent: dict) -> list[torch.Tensor]:
    """The latent cut into the sampler's chunks (one piece if it did not come from the sampler)."""
    x = latent["samples"]
    sizes = latent.get("magi_chunks")
    if not sizes or sum(sizes) != x.shape[2]:
        return [x]
    return list(torch.split(x, list(sizes), dim=2))


def video_samples(latent, vae, who: str) -> torch.Tensor:
    """The LATENT's samples if they are a MAGI video latent for this VAE, else a clear error."""
    x = latent.get("samples") if isinstance(latent, dict) else None
    channels = getattr(getattr(vae, "cfg", None), "z_chans", 16)
    if not torch.is_tensor(x) or x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != channels:
        raise ValueError(f"{who} needs a MAGI video latent (1, {channels}, frames, h, w), got "
                         f"{None if x is None else tuple(x.shape)}: connect the MAGI sampler's LATENT output")
    return x


def decode_chunks(vae, latent: dict, tiling: dict, who: str = "MAGI VAE Decode"):
    """(index, chunks, frames (T, H, W, 3) float32 [0, 1] on the CPU) for each of the sampler's chunks in turn,
    decoded as they are asked for: memory holds one chunk's frames at a time. The latent is checked at once."""
    video_samples(latent, vae, who)
    fps = int(latent.get("magi_fps", 24))
    pieces = split_chunks(latent)
    kw = tiling_kwargs(tiling, fps)
    return ((i, len(pieces), decode_chunk(vae, piece, fps, **kw)) for i, piece in enumerate(pieces))


def decode_video(vae, latent: dict, tiling: dict, vae_key=None, progress=None) -> torch.Tensor:
    """LATENT -> IMAGE frames (N, H, W, 3) float32 [0, 1] on the CPU, chunk by chunk.

    Reuses the frames the sampler decoded for its previews only for the latent they came from (same values, see
    `fingerprint`), the same VAE and tiling; anything else is decoded. progress(done, total) after each chunk."""
    x = video_samples(latent, vae, "MAGI VAE Decode")
    fps = int(latent.get("magi_fps", 24))
    cached = latent.get("magi_decoded")
    if (vae_key is not None and cached and cached.get("key") == decode_key(vae_key, tiling, fps)
            and cached.get("of") == fingerprint(x)):
        return cached["frames"]
    frames = []
    for i, n, f in decode_chunks(vae, latent, tiling):
        frames.append(f)
        if progress is not None:
            progress(i + 1, n)
    return torch.cat(frames)
