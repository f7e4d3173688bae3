"""Blob sources and sinks: Input, Parameter, DummyData (sources), Silence, HDF5Output (sinks).

The data layers that read a dataset (Data, ImageData, HDF5Data, MemoryData, CoSData,
WindowData) are not layers here: the net treats their tops as inputs fed by `hovcaffe.data`.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from hovcaffe import fillers
from hovcaffe.errors import NetDefinitionError
from hovcaffe.layers.base import MANY, CaffeLayer, Shape
from hovcaffe.layers.common import shape_text
from hovcaffe.layers.registry import register_layer

log = logging.getLogger(__name__)


def blob_shape(layer: CaffeLayer, shape_proto, what: str) -> Shape:
    """A BlobShape message as a tuple, refusing negative dims."""
    dims = tuple(int(d) for d in shape_proto.dim)
    if any(d < 0 for d in dims):
        raise layer.param_error(f"{what} {shape_text(dims)} has a negative dim")
    return dims


@register_layer("Input")
class Input(CaffeLayer):
    """Declares net inputs: 0 shapes, one shape for every top, or one shape per top."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 0)
        n_tops, shapes = len(param.top), param.input_param.shape
        if len(shapes) not in (0, 1, n_tops):
            raise self.param_error(f"input_param needs 0, 1 or {n_tops} (one per top) shapes, "
                                   f"got {len(shapes)}")
        self.shapes = [blob_shape(self, s, "input_param.shape") for s in shapes]

    def output_shapes(self, bottom_shapes):
        if not self.shapes:
            raise self.shape_error(f"input_param gives no shapes for tops {list(self.param.top)}; "
                                   f"pass their shapes to the net (input_shapes)")
        return [self.shapes[0 if len(self.shapes) == 1 else i] for i in range(len(self.param.top))]

    def forward(self, *bottoms):
        raise NetDefinitionError(f"{self.where()}: Input tops are net inputs; the net feeds them "
                                 f"and never runs this layer")


@register_layer("Parameter")
class Parameter(CaffeLayer):
    """A learnable blob of `parameter_param.shape` (zeros; Caffe has no filler) as the top."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 0)
        self.expect_tops(1)
        shape = blob_shape(self, param.parameter_param.shape, "parameter_param.shape")
        self.blobs.append(nn.Parameter(torch.zeros(shape)))

    def output_shapes(self, bottom_shapes):
        return [tuple(self.blobs[0].shape)]

    def forward(self):
        return [self.blobs[0]]


@register_layer("DummyData")
class DummyData(CaffeLayer):
    """Tops filled by `dummy_data_param.data_filler` (docs/caffe-semantics.md#dummydata).

    `shape` (one for all tops, or one per top) or the legacy `num/channels/height/width` lists
    (each one value or one per top) give the shapes; `data_filler` is absent (constant 0), one
    for all tops, or one per top. Constant-filled tops are filled once at build time and stay;
    the others are re-drawn on every forward. No gradients flow into them.
    """

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 0)
        n = self.expect_tops(1, MANY)
        p = param.dummy_data_param
        if len(p.data_filler) not in (0, 1, n):
            raise self.param_error(f"dummy_data_param needs 0, 1 or {n} (one per top) data_filler, "
                                   f"got {len(p.data_filler)}")
        self.shapes = self._shapes(p, n)
        if p.data_filler:
            self.fillers = [p.data_filler[0 if len(p.data_filler) == 1 else i] for i in range(n)]
        else:
            self.fillers = [fillers.constant_filler(0.0)] * n
        self.refill = [f.type != "constant" for f in self.fillers]
        for i in range(n):
            # Drawing every top once also reports bad fillers at build time. Random tops keep
            # this first draw only as the holder of their device and dtype.
            self.register_buffer(f"top{i}", self._draw(i), persistent=False)

    def _shapes(self, p, n: int) -> list[tuple[int, ...]]:
        legacy = {f: list(getattr(p, f)) for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if p.shape:
                raise self.param_error("dummy_data_param sets both `shape` and the legacy "
                                       "num/channels/height/width")
            for field, values in legacy.items():
                if len(values) not in (1, n):
                    raise self.param_error(f"dummy_data_param.{field} needs 1 or {n} (one per top) "
                                           f"values, got {len(values)}")
            pick = lambda values, i: values[0 if len(values) == 1 else i]  # noqa: E731
            return [tuple(pick(legacy[f], i) for f in ("num", "channels", "height", "width"))
                    for i in range(n)]
        if len(p.shape) not in (1, n):
            raise self.param_error(f"dummy_data_param needs 1 or {n} (one per top) shapes, "
                                   f"got {len(p.shape)}")
        return [blob_shape(self, p.shape[0 if len(p.shape) == 1 else i], "dummy_data_param.shape")
                for i in range(n)]

    def _draw(self, i: int) -> torch.Tensor:
        return fillers.fill(self.shapes[i], self.fillers[i],
                            where=f"{self.where()} data_filler for top {i}")

    def output_shapes(self, bottom_shapes: Sequence = ()):
        return list(self.shapes)

    def forward(self):
        tops = []
        for i, refill in enumerate(self.refill):
            buf = getattr(self, f"top{i}")
            # A fresh tensor per forward: tensors handed out earlier are never overwritten.
            tops.append(self._draw(i).to(device=buf.device, dtype=buf.dtype) if refill else buf)
        return tops


@register_layer("Silence")
class Silence(CaffeLayer):
    """Consumes its bottoms and produces nothing (hides blobs from the net outputs)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_tops(0)

    def output_shapes(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        return []


@register_layer("HDF5Output")
class HDF5Output(CaffeLayer):
    """Writes bottom 0 / bottom 1 to `hdf5_output_param.file_name` as datasets "data" / "label".

    Caffe truncates the file at setup and fails on the second batch (the datasets already exist);
    here the first forward truncates the file and later batches are appended along axis 0. No tops,
    no gradients. Every process that runs the layer writes the file, so keep it to one rank.
    """

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2)
        self.expect_tops(0)
        self.file_name = param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.param_error("hdf5_output_param.file_name must be set")
        self._started = False

    def output_shapes(self, bottom_shapes):
        return []

    def forward(self, data, label):
        import h5py  # only needed by nets that use this layer

        arrays = {"data": data.detach().cpu().numpy(), "label": label.detach().cpu().numpy()}
        mode = "a" if self._started else "w"
        with h5py.File(self.file_name, mode) as f:
            for name, arr in arrays.items():
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                    continue
                ds = f[name]
                if ds.shape[1:] != arr.shape[1:]:
                    raise self.shape_error(f"batch {name!r} {arr.shape} does not match the rows "
                                           f"already written {ds.shape}")
                ds.resize(ds.shape[0] + arr.shape[0], axis=0)
                ds[-arr.shape[0]:] = arr
        if not self._started:
            log.info("%s: writing batches to %s", self.where(), self.file_name)
        self._started = True
        return []
