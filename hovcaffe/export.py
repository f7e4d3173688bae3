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
            anonymous = [b for b in net.loss_weights if b.startswith("(")]
            hint = (f"; its loss tops {', '.join(map(repr, anonymous))} are Caffe's anonymous "
                    "tops of loss layers without `top`, which Caffe does not count as net outputs: "
                    "name them with -outputs" if anonymous else "")
            raise UserInputError(f"the net has no output blobs to export{hint}")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        slots = self.net.run(dict(zip(self.input_names, inputs)), outputs=self.output_names)
        return tuple(slots[self.net.versions[o][-1]] for o in self.output_names)


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


_PASSED_THROUGH = "{}:hovcaffe-output"


def to_onnx_bytes(net, *, outputs: Sequence[str] | None = None, opset: int = 17) -> bytes:
    """The net's TEST view as a serialized ONNX model with a dynamic batch dimension."""
    module = ExportModule(net, outputs).eval()
    # An input that is also an output (a label nobody consumes) is one value with two uses;
    # torch would rename the input ("label.1"). Export the output under a stand-in name and
    # let the graph output name the input itself (ONNX allows a graph input as an output).
    through = [o for o in module.output_names if o in module.input_names]
    out_names = [_PASSED_THROUGH.format(o) if o in through else o for o in module.output_names]
    axes = _dynamic_axes(module)
    axes.update({_PASSED_THROUGH.format(o): axes[o] for o in through if o in axes})
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript-based exporter is deprecated, not gone
        torch.onnx.export(module, example_inputs(net), buf, dynamo=False,
                          input_names=module.input_names, output_names=out_names,
                          dynamic_axes=axes, opset_version=opset)
    return _outputs_as_inputs(buf.getvalue(), through) if through else buf.getvalue()


def _outputs_as_inputs(model_bytes: bytes, names: Sequence[str]) -> bytes:
    """Point the stand-in outputs of `names` at the graph inputs of the same name."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    stand_ins = {_PASSED_THROUGH.format(n): n for n in names}
    # The exporter made each stand-in from its input by an Identity node, now not needed.
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in stand_ins)]
    del graph.node[:]
    graph.node.extend(kept)
    for out in graph.output:
        if out.name in stand_ins:
            out.name = stand_ins[out.name]
    return model.SerializeToString()


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
