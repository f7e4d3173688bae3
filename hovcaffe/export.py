"""Export the TEST view of a net: ONNX, TorchScript, or a .caffemodel.

The exported graph takes the net inputs (Input / data-layer tops) positionally, in
`net.input_names` order, and returns Caffe's net outputs (`net.output_names`, or the blobs
asked for). The batch dimension (axis 0 of every input and output) is dynamic.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Sequence

import torch
from torch import nn

from hovcaffe.errors import UserInputError
from hovcaffe.utils.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "caffemodel")


class ExportModule(nn.Module):
    """Positional-input, tuple-output view of a CaffeNet (what tracers and ONNX need)."""

    def __init__(self, net, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        self.net = net
        self.input_names = list(net.input_names)
        self.output_names = list(outputs or net.output_names)
        unknown = [o for o in self.output_names if o not in net.blob_shapes]
        if unknown:
            raise UserInputError(f"unknown output blobs {unknown}; the net has "
                                 f"{', '.join(net.blob_shapes)}")
        if not self.output_names:
            raise UserInputError("the net has no output blobs to export")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        blobs = self.net(**dict(zip(self.input_names, inputs)))
        return tuple(blobs[o] for o in self.output_names)


def example_inputs(net, batch: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs with the net's input shapes (batch optionally replaced)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for name in net.input_names:
        shape = list(net.blob_shapes[name])
        if batch is not None and shape:
            shape[0] = batch
        out.append(torch.rand(shape, generator=gen))
    return tuple(out)


def _dynamic_axes(module: ExportModule) -> dict[str, dict[int, str]]:
    axes = {}
    for name in module.input_names + module.output_names:
        if len(module.net.blob_shapes[name]):
            axes[name] = {0: "batch"}
    return axes


def to_onnx_bytes(net, *, outputs: Sequence[str] | None = None, opset: int = 17) -> bytes:
    """The net's TEST view as a serialized ONNX model with a dynamic batch dimension."""
    module = ExportModule(net, outputs).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript-based exporter is deprecated, not gone
        torch.onnx.export(module, example_inputs(net), buf, dynamo=False,
                          input_names=module.input_names, output_names=module.output_names,
                          dynamic_axes=_dynamic_axes(module), opset_version=opset)
    return buf.getvalue()


def to_torchscript(net, *, outputs: Sequence[str] | None = None) -> torch.jit.ScriptModule:
    """A traced TorchScript module of the TEST view (positional inputs, tuple of outputs)."""
    module = ExportModule(net, outputs).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit still works
        return torch.jit.trace(module, example_inputs(net), check_trace=False)


def export_net(net, fmt: str, path: str | os.PathLike[str], *,
               outputs: Sequence[str] | None = None, opset: int = 17) -> None:
    """Write `net` (build it in TEST phase) as `fmt` to `path`, atomically."""
    fmt = fmt.lower()
    if fmt == "onnx":
        atomic_write_bytes(path, to_onnx_bytes(net, outputs=outputs, opset=opset))
    elif fmt == "torchscript":
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit still works
            torch.jit.save(to_torchscript(net, outputs=outputs), buf)
        atomic_write_bytes(path, buf.getvalue())
    elif fmt == "caffemodel":
        from hovcaffe.weights import save_caffemodel
        save_caffemodel(net, path)
    else:
        raise UserInputError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    log.info("exported %s to %s", fmt, path)
