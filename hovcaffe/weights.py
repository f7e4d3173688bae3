"""Weights in and out of a CaffeNet: .caffemodel (Caffe's rules), state_dict, safetensors.

Loading mirrors `Net::CopyTrainedLayersFrom` (semantics doc §13.2): layers are matched by name
only; the blob count must match; a blob with legacy num/channels/height/width fields is compared
right-aligned against the target shape padded to 4 axes, any other blob must match exactly;
`double_data` wins over `data`. Several files may be applied in turn (later ones overwrite).
Saving writes Caffe's V2 form: every layer of the net in execution order with its blobs.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import (array_to_blob, blob_shape, blob_to_array, has_legacy_shape,
                               read_caffemodel, write_caffemodel)
from hovcaffe.errors import WeightsError
from hovcaffe.utils.paths import resolve_path

log = logging.getLogger(__name__)

@dataclass
class LoadReport:
    """What a weights load did, by layer name."""

    copied: list[str] = field(default_factory=list)      # net layers whose blobs were set
    skipped: list[str] = field(default_factory=list)     # file layers with blobs the net lacks
    missing: list[str] = field(default_factory=list)     # net layers with blobs not in the file
    mismatched: list[str] = field(default_factory=list)  # left at init (skip_mismatched=True)

    def merge(self, other: "LoadReport") -> "LoadReport":
        """The combined report of applying `self`'s file, then `other`'s."""
        copied = list(dict.fromkeys(self.copied + other.copied))
        missing = [m for m in other.missing if m not in copied]
        return LoadReport(copied, list(dict.fromkeys(self.skipped + other.skipped)), missing,
                          list(dict.fromkeys(self.mismatched + other.mismatched)))

    def summary(self) -> str:
        return (f"copied {len(self.copied)} layers, skipped {len(self.skipped)} from the file, "
                f"{len(self.missing)} missing (kept their fillers), "
                f"{len(self.mismatched)} mismatched")


def legacy_shape_matches(target: tuple[int, ...], blob: caffe_pb2.BlobProto) -> bool:
    """Caffe's Blob::ShapeEquals against a BlobProto (legacy 4-D rule included)."""
    if has_legacy_shape(blob):
        if len(target) > 4:
            return False
        padded = (1,) * (4 - len(target)) + tuple(target)
        return padded == (blob.num, blob.channels, blob.height, blob.width)
    return tuple(target) == blob_shape(blob)


def load_caffemodel(net, path_or_netparam: str | os.PathLike[str] | caffe_pb2.NetParameter, *,
                    strict: bool = False, skip_mismatched: bool = False) -> LoadReport:
    """Copy blobs from a .caffemodel (or an in-memory NetParameter) into `net` by layer name.

    Args:
        net: a `hovcaffe.net.CaffeNet`.
        path_or_netparam: a .caffemodel path, or a NetParameter holding blobs.
        strict: raise if a net layer that has blobs is absent from the file.
        skip_mismatched: leave a layer whose blob count or shapes differ at its fillers and
            report it, instead of raising (Caffe always aborts).

    Raises:
        WeightsError: unreadable file, blob count/shape mismatch (naming the layer and both
            shapes), or, with `strict`, layers missing from the file.
    """
    if isinstance(path_or_netparam, caffe_pb2.NetParameter):
        netparam, src = path_or_netparam, "<NetParameter>"
    else:
        netparam, src = read_caffemodel(path_or_netparam), str(path_or_netparam)
    report = LoadReport()
    seen: set[str] = set()
    for lp in netparam.layer:
        name = lp.name
        module = net.layer(name)   # Caffe fills the first layer of that name
        if module is None:
            if len(lp.blobs):
                report.skipped.append(name)
            continue
        seen.add(net.layer_key(name))
        problem = _check_layer(module, lp)
        if problem:
            if skip_mismatched:
                log.warning("%s: %s; left at its initial values", src, problem)
                report.mismatched.append(name)
                continue
            raise WeightsError(f"{src}: {problem}. To learn this layer from scratch instead, "
                               "rename it in the prototxt")
        try:   # decode every blob first: a corrupt one must not leave the layer half-loaded
            arrays = [blob_to_array(blob) for blob in lp.blobs]
        except WeightsError as exc:
            raise WeightsError(f"{src}: layer {name!r}: {exc}") from None
        with torch.no_grad():
            for target, array in zip(module.blobs, arrays):
                target.copy_(torch.from_numpy(array).reshape(target.shape))
        if len(lp.blobs):
            report.copied.append(name)
    report.missing = [n for n, m in net.layers.items() if len(m.blobs) and n not in seen]
    if report.missing:
        log.info("%s: %d layers with parameters are not in the file: %s", src,
                 len(report.missing), ", ".join(report.missing))
    if strict and report.missing:
        raise WeightsError(f"{src}: no weights for layers {', '.join(report.missing)} (strict "
                           "loading needs every layer that has parameters)")
    return report


def _check_layer(module, lp: caffe_pb2.LayerParameter) -> str:
    """'' when the file layer fits the built module, else what is wrong."""
    if len(lp.blobs) != len(module.blobs):
        return (f"layer {lp.name!r} has {len(lp.blobs)} blobs in the weights file but "
                f"{len(module.blobs)} in the net (bias_term or layer type differs?)")
    for i, blob in enumerate(lp.blobs):
        target = tuple(module.blobs[i].shape)
        if not legacy_shape_matches(target, blob):
            return (f"cannot copy param {i} of layer {lp.name!r}: shape mismatch, file blob "
                    f"{list(blob_shape(blob))}, net blob {list(target)}")
    return ""


def load_weights(net, sources: str | Iterable, *, strict: bool = False,
                 skip_mismatched: bool = False) -> LoadReport:
    """Apply several weights files in turn ("a.caffemodel,b.caffemodel" or a list).

    `.safetensors` files go through `load_safetensors`; everything else is a caffemodel.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [s for s in str(sources).split(",") if s.strip()]
    total = None
    for src in sources:
        src = str(src).strip() if not isinstance(src, caffe_pb2.NetParameter) else src
        if isinstance(src, str) and src.endswith(".safetensors"):
            rep = load_safetensors(net, src, strict=strict)
        else:
            rep = load_caffemodel(net, src, strict=strict, skip_mismatched=skip_mismatched)
        total = rep if total is None else total.merge(rep)
    return total or LoadReport()


def net_to_netparam(net, *, with_blobs: bool = True) -> caffe_pb2.NetParameter:
    """The net as Caffe's Net::ToProto writes it: every layer, in order, with its blobs."""
    out = caffe_pb2.NetParameter()
    out.name = net.net_param.name
    for lp, key in zip(net.net_param.layer, net.layer_keys):
        dst = out.layer.add()
        dst.CopyFrom(lp)
        dst.ClearField("blobs")
        if not dst.HasField("phase"):
            dst.phase = net.phase
        module = net.layers[key] if key in net.layers else None
        if module is None or not with_blobs:
            continue
        # Caffe's own param specs are made explicit for statistics blobs (lr_mult 0).
        for i in getattr(module, "frozen_blobs", ()):
            while len(dst.param) <= i:
                dst.param.add()
            dst.param[i].lr_mult = 0.0
        for p in module.blobs:
            array_to_blob(p.detach().to("cpu", torch.float32).numpy(), dst.blobs.add())
    return out


def save_caffemodel(net, path: str | os.PathLike[str]) -> None:
    """Write the net's weights as a V2 binary .caffemodel, atomically (readable by Caffe)."""
    write_caffemodel(net_to_netparam(net), path)


# ---------------------------------------------------------------------------- Caffe HDF5

def caffemodel_h5_bytes(net_param) -> bytes:
    """Caffe's HDF5 weights layout: dataset `data/<layer>/<i>` per blob of a NetParameter."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        data = fh.create_group("data")
        for layer in net_param.layer:
            group = data.create_group(layer.name)
            for i, blob in enumerate(layer.blobs):
                group.create_dataset(str(i), data=blob_to_array(blob))
        fh.create_group("diff")
    return buf.getvalue()


def read_caffemodel_h5(path: str):
    """Caffe's HDF5 weights (`data/<layer>/<i>`) as a NetParameter whose layers carry the blobs."""
    import h5py

    net = caffe_pb2.NetParameter()
    try:
        with h5py.File(path, "r") as fh:
            for name, group in fh["data"].items():
                layer = net.layer.add(name=name)
                for i in range(len(group)):
                    array_to_blob(np.asarray(group[str(i)], dtype=np.float32), layer.blobs.add())
    except (OSError, KeyError) as exc:
        raise WeightsError(f"cannot read HDF5 weights {path!r} (Caffe layout data/<layer>/<i>): "
                           f"{exc}") from exc
    return net



def read_weights(path: str) -> caffe_pb2.NetParameter:
    """A .caffemodel (binary, any Caffe version) or Caffe's HDF5 `.caffemodel.h5`, as a
    NetParameter whose layers carry the blobs (matched by layer name when loading)."""
    if not str(path).endswith(".h5"):
        return read_caffemodel(path)
    return read_caffemodel_h5(path)


def load_weights_into(nets: Sequence[Any], path: str, base_dir: str | None = None):
    """Copy a weights file into each net by layer name (Caffe's CopyTrainedLayersFrom).

    Returns:
        The LoadReport of the first net (the train net).
    """
    resolved = resolve_path(path, base_dir, what="weights")
    net_param = read_weights(resolved)
    reports = [load_caffemodel(net, net_param) for net in nets]
    log.info("copied weights from %s", resolved)
    return reports[0]


# ---------------------------------------------------------------------------- safetensors

def _named_owner_tensors(net) -> dict[str, torch.Tensor]:
    return {p.name: p.param.detach().to("cpu").contiguous() for p in net.learnable_params()}


def save_safetensors(net, path: str | os.PathLike[str]) -> None:
    """Owner blobs keyed "<layer>/<index>" in a safetensors file (written atomically)."""
    from safetensors.torch import save

    from hovcaffe.utils.fileio import atomic_write_bytes
    atomic_write_bytes(path, save(_named_owner_tensors(net)))


def load_safetensors(net, path: str | os.PathLike[str], *, strict: bool = False) -> LoadReport:
    """Load a checkpoint written by `save_safetensors` (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors checkpoint: {exc}") from None
    report = LoadReport()
    wanted = {p.name: p.param for p in net.learnable_params()}
    layers_done: set[str] = set()
    with torch.no_grad():
        for key, value in tensors.items():
            if key not in wanted:
                report.skipped.append(key)
                continue
            target = wanted[key]
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(f"{path}: {key} has shape {list(value.shape)}, the net "
                                   f"expects {list(target.shape)}")
            target.copy_(value)
            layers_done.add(key.rsplit("/", 1)[0])
    report.copied = sorted(layers_done)
    report.missing = sorted({k.rsplit("/", 1)[0] for k in wanted if k not in tensors})
    if strict and report.missing:
        raise WeightsError(f"{path}: no weights for {', '.join(report.missing)}")
    return report
