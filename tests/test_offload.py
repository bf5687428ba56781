"""Block swap: same output, swapped layers back in host memory after each forward, resident layers on the device."""
import pytest
import torch

import magi_core  # noqa: F401
from magi_core.config import preset
from magi_core.dit import build_dit, init_random_
from magi_core.dit.offload import enable_block_swap

from test_dit import causal_ranges, inputs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_block_swap_same_output(device):
    cfg = preset("tiny").replace(num_layers=4)
    model = init_random_(build_dit(cfg), seed=0)
    x, t, y, mask = inputs(cfg, dn=3)
    kv = causal_ranges(3, 24)
    ref = model.to(device)(*(v.to(device) for v in (x, t, y, mask)), kv).cpu()
    model.to("cpu")
    swap = enable_block_swap(model, device, resident=1)
    seen = []
    model.videodit_blocks.layers[2].register_forward_pre_hook(
        lambda m, a: seen.append(m.mlp.linear_fc1.weight.device.type))
    for _ in range(2):  # twice: the prefetch of the next forward's first swapped layer is exercised
        out = model(*(v.to(device) for v in (x, t, y, mask)), kv).cpu()
        assert torch.equal(out, ref)
    assert seen == [device, device]
    for layer in model.videodit_blocks.layers[1:]:
        assert all(p.device.type == "cpu" for p in layer.parameters())
    assert all(p.device.type == device for p in model.videodit_blocks.layers[0].parameters())
    swap.remove()
    with pytest.raises(ValueError, match="resident"):
        enable_block_swap(model, device, resident=9)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_failed_forward_leaves_no_swapped_layer_on_the_device(device):
    """An error inside a streamed layer (e.g. out of memory) skips its post hook; the model puts every swapped
    layer back on its host copy and drops the prefetched one before re-raising."""
    cfg = preset("tiny").replace(num_layers=4)
    model = init_random_(build_dit(cfg), seed=0)
    swap = enable_block_swap(model, device, resident=1)
    x, t, y, mask = inputs(cfg, dn=2)

    def boom(module, args):
        raise RuntimeError("planted failure")

    hook = model.videodit_blocks.layers[2].mlp.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="planted failure"):
        model(*(v.to(device) for v in (x, t, y, mask)), causal_ranges(2, 24))
    assert not swap.pending  # the layer prefetched while layer 2 ran is gone
    for host in swap.host.values():
        assert all(p.data_ptr() == h.data_ptr() for p, h in host)
    hook.remove()
    out = model(*(v.to(device) for v in (x, t, y, mask)), causal_ranges(2, 24))  # and it runs again
    assert torch.isfinite(out).all()
