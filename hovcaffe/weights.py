"""The one way weights get into (and out of) a CaffeNet, whatever file they come in.

Formats, chosen by the file name (`WEIGHT_FORMATS`): Caffe's binary `.caffemodel` (V0, V1 or V2,
upgraded), Caffe's HDF5 `.caffemodel.h5` (datasets `data/<layer>/<i>`), `.safetensors` and a plain
torch state_dict `.pt`/`.pth` (read with `torch.load(weights_only=True)`, never unpickling code),
both keyed `<layer>/<i>` (a CaffeNet's own `state_dict()` keys, `layers.<layer>.blobs.<i>`, work
too). Every format is read into a NetParameter whose layers carry the blobs, and then copied by
Caffe's one rule.

Copying mirrors `Net::CopyTrainedLayersFrom` (docs/caffe-semantics.md#copying-weights): layers
are matched by name only; the blob count must match; a blob with legacy num/channels/height/width fields is compared
right-aligned against the target shape padded to 4 axes, any other blob must match exactly;
`double_data` wins over `data`. Several files may be applied in turn (later ones overwrite).
Saving writes Caffe's V2 form: every layer of the net in execution order with its blobs.
"""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import (array_to_blob, blob_shape, blob_to_array, has_legacy_shape,
                               parse_caffemodel, write_caffemodel)
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
                    strict: bool = False, skip_mismatched: bool = False,
                    source: str | None = None) -> LoadReport:
    """Copy blobs from one weights file (or an in-memory NetParameter) into `net` by layer name.

    Args:
        net: a `hovcaffe.net.CaffeNet`.
        path_or_netparam: a weights file in any of `WEIGHT_FORMATS`, or a NetParameter holding
            blobs.
        strict: raise if a net layer that has blobs is absent from the file.
        skip_mismatched: leave a layer whose blob count or shapes differ at its fillers and
            report it, instead of raising (Caffe always aborts).
        source: the file a NetParameter came from, for messages.

    Raises:
        WeightsError: unreadable file, blob count/shape mismatch (naming the layer and both
            shapes), or, with `strict`, layers missing from the file.
    """
    if isinstance(path_or_netparam, caffe_pb2.NetParameter):
        netparam, src = path_or_netparam, source or "<NetParameter>"
    else:
        netparam, src = read_weights(path_or_netparam), str(path_or_netparam)
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


def load_weights(nets, sources: str | os.PathLike[str] | Iterable, *,
                 base_dir: str | None = None, strict: bool = False,
                 skip_mismatched: bool = False) -> LoadReport:
    """Apply weights files in turn to one net or to several (every command's `-weights`).

    Args:
        nets: a CaffeNet, or a list of them (each gets every file; e.g. a train net and its test
            nets).
        sources: "a.caffemodel,b.safetensors" (Caffe's comma-separated list) or a list of files.
        base_dir: the folder of the file that names them (relative paths: current directory
            first, then this one); None for paths given on the command line.
        strict, skip_mismatched: as for `load_caffemodel`.

    Returns:
        The combined report for the first net.
    """
    nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
    total = None
    for src in split_weights(sources):
        resolved = src if base_dir is None else resolve_path(src, base_dir, what="weights")
        net_param = read_weights(resolved)
        reports = [load_caffemodel(net, net_param, strict=strict, skip_mismatched=skip_mismatched,
                                   source=resolved) for net in nets]
        log.info("copied weights from %s", resolved)
        total = reports[0] if total is None else total.merge(reports[0])
    return total or LoadReport()


def split_weights(sources: str | os.PathLike[str] | Iterable) -> list[str]:
    """The files of a weights list: Caffe accepts comma-separated lists in -weights and in the
    solver's `weights` field, and lists of them may be repeated."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    return [w.strip() for item in items for w in str(item).split(",") if w.strip()]


# ---------------------------------------------------------------------------- formats

@dataclass(frozen=True)
class WeightsFormat:
    """One kind of weights file: the name endings that mark it and how its bytes are read."""

    name: str
    suffixes: tuple[str, ...]
    parse: Callable[[bytes, str], caffe_pb2.NetParameter]  # (bytes, file name) -> blobs by layer


def _parse_caffe_h5(data: bytes, source: str) -> caffe_pb2.NetParameter:
    """Caffe's HDF5 weights (`data/<layer>/<i>`) as a NetParameter whose layers carry the blobs."""
    import h5py

    net = caffe_pb2.NetParameter()
    try:
        with h5py.File(io.BytesIO(data), "r") as fh:
            for name, group in fh["data"].items():
                layer = net.layer.add(name=name)
                for i in range(len(group)):
                    array_to_blob(np.asarray(group[str(i)], dtype=np.float32), layer.blobs.add())
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"{source}: cannot read HDF5 weights (Caffe layout data/<layer>/<i>): "
                           f"{exc}") from None
    return net


def _parse_safetensors(data: bytes, source: str) -> caffe_pb2.NetParameter:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsError(f"{source}: cannot read safetensors weights: {exc}") from None
    return _keyed_to_netparam(tensors, source)


def _parse_torch_state_dict(data: bytes, source: str) -> caffe_pb2.NetParameter:
    try:  # weights_only: tensors and plain containers only, no code from the file runs
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise WeightsError(f"{source}: cannot read a torch state_dict (weights_only): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise WeightsError(f"{source}: expected a state_dict (a mapping of names to tensors)")
    return _keyed_to_netparam(state, source)


#: `<layer>/<i>` (safetensors, `save_safetensors`) or a CaffeNet's `layers.<layer>.blobs.<i>`
_KEY = re.compile(r"^(?:layers\.(?P<module>.+)\.blobs\.|(?P<layer>.+)/)(?P<index>\d+)$")


def _keyed_to_netparam(tensors: Mapping[str, torch.Tensor], source: str) -> caffe_pb2.NetParameter:
    """Tensors keyed by layer and blob index, as a NetParameter (blob indices must be 0..n-1)."""
    layers: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise WeightsError(f"{source}: tensor {key!r} is not named <layer>/<blob index>")
        layers.setdefault(m.group("module") or m.group("layer"), {})[int(m.group("index"))] = value
    net = caffe_pb2.NetParameter()
    for name, blobs in layers.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise WeightsError(f"{source}: layer {name!r} has blobs {sorted(blobs)}; expected "
                               f"0..{len(blobs) - 1}")
        layer = net.layer.add(name=name)
        for i in range(len(blobs)):
            array = blobs[i].detach().to("cpu", torch.float32).numpy()
            array_to_blob(array, layer.blobs.add())
    return net


#: Longest ending first: `.caffemodel.h5` is HDF5, not a `.caffemodel`.
WEIGHT_FORMATS: tuple[WeightsFormat, ...] = (
    WeightsFormat("Caffe HDF5", (".caffemodel.h5", ".h5"), _parse_caffe_h5),
    WeightsFormat("safetensors", (".safetensors",), _parse_safetensors),
    WeightsFormat("torch state_dict", (".pt", ".pth"), _parse_torch_state_dict),
    WeightsFormat("caffemodel", (".caffemodel",), lambda data, source: parse_caffemodel(data, source)),
)


def weights_format(name: str) -> WeightsFormat:
    """The format a weights file name marks (raises WeightsError naming the file otherwise)."""
    lower = str(name).lower()
    for fmt in WEIGHT_FORMATS:
        if lower.endswith(fmt.suffixes):
            return fmt
    known = ", ".join(s for fmt in WEIGHT_FORMATS for s in fmt.suffixes)
    raise WeightsError(f"{name}: unknown weights format; the file name must end in one of {known}")


def parse_weights(data: bytes, name: str) -> caffe_pb2.NetParameter:
    """The blobs of weights-file bytes, by layer (`name` - a path or URL - picks the format)."""
    return weights_format(name).parse(data, str(name))


def read_weights(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Read a weights file of any of `WEIGHT_FORMATS` as a NetParameter whose layers carry blobs.

    Raises:
        WeightsError: unknown file name ending, missing/unreadable file, or corrupt content;
            the message names the file.
    """
    fmt = weights_format(str(path))
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights: {exc.strerror or exc}") from None
    return fmt.parse(data, str(path))


def caffemodel_bytes(data: bytes, name: str) -> bytes:
    """Weights in any of `WEIGHT_FORMATS` as the bytes of a binary V2 .caffemodel."""
    if weights_format(name).name == "caffemodel":
        parse_caffemodel(data, str(name))  # fail here on corrupt bytes, keep the file as it is
        return data
    return parse_weights(data, name).SerializeToString()


# ---------------------------------------------------------------------------- saving

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


def caffemodel_h5_bytes(net_param: caffe_pb2.NetParameter) -> bytes:
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


def save_safetensors(net, path: str | os.PathLike[str]) -> None:
    """Owner blobs keyed "<layer>/<index>" in a safetensors file (written atomically)."""
    from safetensors.torch import save

    from hovcaffe.utils.fileio import atomic_write_bytes
    tensors = {p.name: p.param.detach().to("cpu").contiguous() for p in net.learnable_params()}
    atomic_write_bytes(path, save(tensors))
