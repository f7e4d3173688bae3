"""Build single layers from prototxt snippets for unit tests."""
from __future__ import annotations

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_text
from hovcaffe.layers import get_builder


def layer(text: str, bottom_shapes, phase=caffe_pb2.TEST):
    """Build the layer described by `text` (a LayerParameter body) for `bottom_shapes`."""
    lp = parse_text(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = "l"
    if not len(lp.bottom):
        lp.bottom.extend(f"b{i}" for i in range(len(bottom_shapes)))
    if not len(lp.top):
        lp.top.append("t")
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in bottom_shapes], phase)


def tensor(a, grad: bool = False) -> torch.Tensor:
    t = torch.tensor(np.asarray(a, dtype=np.float32))
    return t.requires_grad_(grad)


def rng(seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState(seed)
