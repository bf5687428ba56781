"""fp8 weight storage on the fly (weight_dtype fp8_e4m3fn): bounded rounding error, half the memory, loader path."""
import torch

import magi_core  # noqa: F401
from magi_core.checkpoint import load_dit, save_official
from magi_core.config import preset
from magi_core.dit import build_dit, init_random_
from magi_core.dit.weight_fp8 import Fp8WeightLinear, store_weights_fp8_
from magi_core.settings import DiTRuntime

from test_dit import causal_ranges, inputs


def _bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def test_dequantized_weight_error_is_e4m3_rounding():
    lin = torch.nn.Linear(64, 32, bias=False, dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=0.05)
    w = lin.weight.double()
    q = Fp8WeightLinear(lin)
    deq = (q.weight_fp8.double() * q.weight_scale.double())
    row_max = w.abs().amax(1, keepdim=True)
    # e4m3: 3 mantissa bits -> relative error <= 2^-4 for normal values; values below the smallest normal
    # (2^-6 of the scale unit) have an absolute error <= 2^-10 units
    bound = torch.maximum(w.abs() * 2**-4, row_max / 448 * 2**-9) + 1e-12
    assert ((deq - w).abs() <= bound).all()
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    assert torch.equal(q(x), torch.nn.functional.linear(x, deq.to(torch.bfloat16)))


def test_model_halves_memory_and_stays_close():
    cfg = preset("tiny").replace(num_layers=3)
    model = init_random_(build_dit(cfg), seed=0)
    x, t, y, mask = inputs(cfg)
    kv = causal_ranges(2, 24)
    ref = model(x, t, y, mask, kv)
    before = _bytes(model)
    assert store_weights_fp8_(model) == 3 * 8
    out = model(x, t, y, mask, kv)
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"fp8 weight storage: rel L2 vs bf16 {rel:.3e}, bytes {before} -> {_bytes(model)}")
    assert 1e-4 < rel < 0.1
    assert _bytes(model) < 0.7 * before
    model.set_precision("exact")  # fp32 linear_proj path uses the dequantized weight
    assert torch.isfinite(model(x, t, y, mask, kv)).all()


def test_load_dit_weight_dtype_option(tmp_path):
    cfg = preset("tiny-distill").replace(num_layers=3)
    model = init_random_(build_dit(cfg), seed=1)
    folder = save_official(model, tmp_path / "tiny_distill", "distill", single_file=True)
    m8, info = load_dit(folder, DiTRuntime(weight_dtype="fp8_e4m3fn"))
    assert any("fp8" in n for n in info["notes"])
    assert isinstance(m8.videodit_blocks.layers[1].mlp.linear_fc1, Fp8WeightLinear)
    x, t, y, mask = inputs(cfg)
    a = model(x, t, y, mask, causal_ranges(2, 24), dt_factor=8.0)
    b = m8(x, t, y, mask, causal_ranges(2, 24), dt_factor=8.0)
    assert ((a - b).norm() / a.norm()) < 0.1
    try:
        DiTRuntime(weight_dtype="int4")
    except ValueError as e:
        assert "weight_dtype" in str(e)
    else:
        raise AssertionError("bad weight_dtype accepted")
