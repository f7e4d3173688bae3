"""One forward (and backward) pass reported in Caffe's layout: blob values, param and blob diffs.

This is what `hovcaffe forward` writes and what the oracle tests compare with pycaffe's
`net.blobs[...].data`, `net.params[...][i].diff` and `net.blobs[...].diff`:

* blob values: the final version of every blob (an in-place chain leaves its last value);
* `"<layer>/<i>"`: the gradient of parameter blob i (zeros where Caffe computes none);
* `"blob_diff/<blob>"`: Caffe's diff of the blob, which for an in-place chain is the gradient
  with respect to the *first* version of the name (the input of the first in-place layer).

As in Caffe, net inputs get gradients only under `force_backward`, and `force_backward` also
makes parameters with lr_mult 0 compute their diffs (statistics blobs never do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from hovcaffe.net import CaffeNet


@dataclass
class PassResult:
    """Tensors of one pass, keyed like the oracle's npz files."""

    blobs: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None
    layer_outputs: dict[str, torch.Tensor] = field(default_factory=dict)


def run_pass(net: CaffeNet, inputs: Mapping[str, torch.Tensor], *, backward: bool = False
             ) -> PassResult:
    """Run `net` once on `inputs`; with `backward`, backpropagate the objective like Caffe.

    Returns:
        PassResult with every declared blob, `layer_outputs` ("<layer>/<top>" -> the value
        right after that layer ran), and with `backward` the param/blob diffs and the loss.
    """
    inputs = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)).detach()
              for k, v in inputs.items()}
    if not backward:
        with torch.no_grad():
            slots = net.run(inputs)
        return _result(net, slots)

    frozen = {id(p) for m in net.layers.values()
              for i, p in enumerate(m.blobs) if i in getattr(m, "frozen_blobs", ())}
    restore = []
    for m in net.layers.values():
        for p in m.blobs:
            p.grad = None
            if net.force_backward and not p.requires_grad and id(p) not in frozen:
                p.requires_grad_(True)
                restore.append(p)
    try:
        if net.force_backward:
            for v in inputs.values():
                if v.is_floating_point():
                    v.requires_grad_(True)
        slots = net.run(inputs)
        for t in slots:
            if isinstance(t, torch.Tensor) and t.requires_grad and not t.is_leaf:
                t.retain_grad()
        res = _result(net, slots)
        loss = net.objective({n: slots[s[-1]] for n, s in net.versions.items()})
        if loss.requires_grad:
            loss.backward()
        res.loss = loss.detach()
        res.grads = _diffs(net, slots)
    finally:
        for p in restore:
            p.requires_grad_(False)
    return res


def _result(net: CaffeNet, slots) -> PassResult:
    # Anonymous loss tops ("(<layer> top 0)") included, as pycaffe's net.blobs has Caffe's
    # "(automatic)" blobs.
    blobs = {n: slots[s[-1]] for n, s in net.versions.items()}
    outs = {f"{layer}/{i}": slots[s] for layer, tops in net.layer_tops.items()
            for i, s in enumerate(tops)}
    return PassResult(blobs=blobs, layer_outputs=outs)


def _diffs(net: CaffeNet, slots) -> dict[str, torch.Tensor]:
    grads: dict[str, torch.Tensor] = {}
    for layer, module in net.layers.items():
        for i, p in enumerate(module.blobs):
            grads[f"{layer}/{i}"] = p.grad.detach().clone() if p.grad is not None \
                else torch.zeros_like(p.detach())
    for name, versions in net.versions.items():
        diff = None
        for s in versions:   # the earliest version that received a gradient
            t = slots[s]
            if isinstance(t, torch.Tensor) and t.grad is not None:
                diff = t.grad.detach()
                break
        grads[f"blob_diff/{name}"] = diff if diff is not None else \
            torch.zeros_like(slots[versions[-1]].detach())
    return grads
