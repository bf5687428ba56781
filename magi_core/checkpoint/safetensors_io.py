"""Reading and writing safetensors files (plain or `.zst`, decompressed in memory, streamed): headers, tensor bytes."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch


# safetensors header dtype strings <-> torch dtypes
ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_MAX_HEADER = 100 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or loaded; the message says what is wrong and what to do."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _short(names, n: int = 5) -> str:
    names = list(names)
    more = f", ... ({len(names)} in total)" if len(names) > n else ""
    return ", ".join(str(x) for x in names[:n]) + more


# ----------------------------------------------------------------------------- one safetensors file


@dataclass
class ShardFile:
    """Header of one safetensors file (plain or `.zst`): raw name -> (shape, dtype, begin, end) in the data."""

    path: Path
    data_start: int
    tensors: dict
    metadata: dict
    problems: list = field(default_factory=list)

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".zst"


def _open_raw(path: Path):
    f = open(path, "rb")
    if path.suffix != ".zst":
        return f
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)


def _read_exact(stream, n: int, path: Path) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    try:
        while got < n:
            k = stream.readinto(view[got:])
            if not k:
                raise CheckpointError(f"{path} ends early (truncated or incomplete download?): re-download this file")
            got += k
    except CheckpointError:
        raise
    except Exception as e:  # zstd errors, I/O errors
        raise CheckpointError(f"{path} cannot be read ({e}): the file is corrupt or truncated, re-download it") from e
    return buf


def read_header(path: str | Path) -> ShardFile:
    """Parse the JSON header of a `.safetensors` (or `.safetensors.zst`) file; reads no tensor data."""
    path = Path(path)
    with _open_raw(path) as f:
        head = bytes(_read_exact(f, 8, path))
        if head.startswith(b"version "):
            raise CheckpointError(f"{path} is a git-lfs pointer, not the weights: download the real file "
                                  "(git lfs pull, or huggingface-cli download)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path} is not a safetensors file (bad header length): wrong or corrupt file")
        try:
            raw = json.loads(bytes(_read_exact(f, n, path)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file (header is not JSON): wrong or corrupt file") from e
    metadata = raw.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, t in raw.items():
        try:
            dtype, shape, (a, b) = ST_DTYPES[t["dtype"]], tuple(t["shape"]), t["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad header entry for {name!r} ({e}): corrupt file") from e
        if b - a != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: header entry {name!r} has inconsistent sizes: corrupt file")
        tensors[name] = (shape, dtype, a, b)
        end = max(end, b)
    shard = ShardFile(path, 8 + n, tensors, metadata)
    if not shard.compressed and path.stat().st_size < shard.data_start + end:
        shard.problems.append(f"{path.name} is truncated ({path.stat().st_size:,} bytes, its header needs "
                              f"{shard.data_start + end:,}): incomplete download, re-download it")
    return shard


def _iter_bytes(shard: ShardFile, raw_names, chunk: int | None = None):
    """Yield (raw name, bytes) in file order; with `chunk`, big tensors come as several consecutive pieces."""
    order = sorted(raw_names, key=lambda r: shard.tensors[r][2])
    with _open_raw(shard.path) as f:
        for raw in order:
            _, _, a, b = shard.tensors[raw]
            f.seek(shard.data_start + a)  # forward-only for .zst (decompresses and discards)
            left = b - a
            while True:
                k = left if chunk is None else min(chunk, left)
                yield raw, _read_exact(f, k, shard.path)
                left -= k
                if left == 0:
                    break


def _tensor_from_bytes(buf: bytearray, shape, dtype) -> torch.Tensor:
    if len(buf) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _read_shard(shard: ShardFile, names: dict, device) -> dict:
    """names: raw -> canonical. Returns canonical -> tensor on `device`."""
    if not shard.compressed:
        from safetensors import safe_open

        with safe_open(str(shard.path), framework="pt", device=str(device)) as f:
            return {canon: _fresh(f.get_tensor(raw)) for raw, canon in names.items()}
    out = {}
    for raw, buf in _iter_bytes(shard, names):
        shape, dtype = shard.tensors[raw][:2]
        out[names[raw]] = _fresh(_tensor_from_bytes(buf, shape, dtype).to(device))
    return out


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor read from a file sits at the file's byte offset (e.g. data_ptr % 64 == 56), which sends CPU
    GEMMs down another path than the reference's freshly allocated weights: copy it into its own storage."""
    return t.clone() if t.device.type == "cpu" else t



def _write_safetensors_header(f, entries: list, metadata: dict) -> None:
    """entries: (name, shape, dtype, nbytes) in data order; data must follow contiguously."""
    header, pos = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
    for name, shape, dtype, nbytes in entries:
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)

