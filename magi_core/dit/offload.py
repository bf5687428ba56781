"""Block swap: keep only some transformer layers on the GPU and stream the others in from host memory.

`enable_block_swap(model, device, resident=k)` leaves layers 0..k-1 (and the embedders, final layers) on
`device`; the weights of layers k.. live in (pinned) host memory and are copied to the device just before the
layer runs, the next swapped layer being prefetched on a side CUDA stream while the current one computes.
Peak weight memory is then k layers + 2 swapped layers instead of all of them: the way to fit the 24B model
(~1 GB of bf16 weights per layer) or 4.5B with a long video on a 24 GB card. Numerics are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class BlockSwap:
    def __init__(self, model, device, resident: int):
        self.device = torch.device(device)
        layers = model.videodit_blocks.layers
        if not 0 <= resident <= len(layers):
            raise ValueError(f"resident layers must be in 0..{len(layers)}, got {resident}")
        self.swapped = list(layers)[resident:]
        self.host: dict[int, list[tuple[nn.Parameter | torch.Tensor, torch.Tensor]]] = {}
        self.pending: dict[int, tuple[list, torch.cuda.Event | None]] = {}
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        pin = self.device.type == "cuda"
        for layer in list(layers)[:resident]:
            layer.to(self.device)
        for other in (model.x_embedder, model.t_embedder, model.y_embedder, model.rope, model.final_linear,
                      model.videodit_blocks.final_layernorm):
            other.to(self.device)
        self.handles = []
        for i, layer in enumerate(self.swapped):
            tensors = list(layer.parameters()) + list(layer.buffers())
            host = []
            for t in tensors:
                h = t.detach().to("cpu")
                if pin:
                    h = h.pin_memory()
                t.data = h
                host.append((t, h))
            self.host[i] = host
            self.handles.append(layer.register_forward_pre_hook(self._pre(i)))
            self.handles.append(layer.register_forward_hook(self._post(i)))

    def _copy_in(self, i: int):
        """Start copying swapped layer i to the device (on the side stream when there is one)."""
        if i in self.pending or i >= len(self.swapped):
            return
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                dev = [h.to(self.device, non_blocking=True) for _, h in self.host[i]]
                event = torch.cuda.Event()
                event.record(self.stream)
        else:
            dev, event = [h.to(self.device) for _, h in self.host[i]], None
        self.pending[i] = (dev, event)

    def _pre(self, i):
        def hook(module, args):
            self._copy_in(i)
            dev, event = self.pending.pop(i)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            for (t, _), d in zip(self.host[i], dev):
                t.data = d
            self._copy_in(i + 1)  # prefetch the next swapped layer while this one computes
        return hook

    def _post(self, i):
        def hook(module, args, output):
            for t, h in self.host[i]:
                if self.stream is not None:
                    t.data.record_stream(torch.cuda.current_stream(self.device))
                t.data = h
            if i == len(self.swapped) - 1:
                self._copy_in(0)  # the next forward's first swapped layer
            return output
        return hook

    def release(self):
        """Put every swapped layer back on its host copy and drop the prefetched one: nothing of the swapped
        layers stays on the GPU (also after a forward that failed between a layer's pre and post hooks)."""
        self.pending.clear()
        for host in self.host.values():
            for t, h in host:
                t.data = h

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def enable_block_swap(model, device, resident: int) -> BlockSwap:
    """Keep `resident` layers on `device`, stream the rest (see module doc). Returns the BlockSwap (`.remove()`)."""
    swap = BlockSwap(model, device, resident)
    model.block_swap = swap
    return swap
