"""Feeding a net: one data feed per data layer, plus arrays for `Input` blobs.

* Data layers of the phase-filtered net get their registered feed
  (`hovcaffe.data.registry.make_feed`).
* A source override (`hovcaffe train --train-data/--test-data`) replaces the layer's source. For an
  `HDF5Data` layer it is a list file or an .h5 file. For any other data layer type (LMDB `Data`,
  `ImageData`, ...), an HDF5 source (an .h5 file or a list of them) feeds the layer's tops with
  Caffe's HDF5 row order, the layer's own batch size and the `scale` / `mean_value` of its
  `transform_param`; any other override goes to that layer type's own feed as its source URL.
* `Input` blobs are read from an .npz file (`--input-data`) with arrays named like the blobs, in
  batches of the Input shape's first dimension, in order and wrapping around.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hovcaffe.caffe.data_layer_types import FED_TYPES, batch_size_of
from hovcaffe.data.hdf5 import H5_SUFFIXES, ArrayFileFeed, load_h5, load_npz, source_files
from hovcaffe.data.registry import FeedContext, make_feed
from hovcaffe.errors import ShapeError, UserInputError
from hovcaffe.utils.paths import find_path, resolve_path

log = logging.getLogger(__name__)

def is_hdf5_source(path: str) -> bool:
    """An .h5 file, or a list file whose first entry is one."""
    if path.lower().endswith(H5_SUFFIXES):
        return True
    try:
        with open(path) as fh:
            first = fh.read(4096).split()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(first) and first[0].lower().endswith(H5_SUFFIXES)


def simple_transform(layer):
    """`scale` and `mean_value` of a layer's transform_param, as a batch function (or None).

    Used when an HDF5 override replaces a layer that transforms its data; crops, mirrors and
    mean files need the layer's own feed and are refused here.
    """
    if not layer.HasField("transform_param"):
        return None
    tp = layer.transform_param
    unsupported = [f for f in ("crop_size", "mirror", "mean_file") if tp.HasField(f)
                   and getattr(tp, f)]
    if unsupported:
        raise UserInputError(
            f"layer {layer.name!r}: an HDF5 override cannot apply transform_param "
            f"{', '.join(unsupported)}; store the data already transformed in the HDF5 files")
    scale = np.float32(tp.scale)
    means = np.asarray(tp.mean_value, dtype=np.float32)
    top = layer.top[0]

    def apply(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = batch[top]
        if means.size:
            shape = (1, -1) + (1,) * (x.ndim - 2) if means.size > 1 else ()
            x = x - (means.reshape(shape) if shape else means[0])
        return {**batch, top: x * scale}

    return apply


class NetFeeder:
    """All feeds of one net; `next_batch()` gives the dict of input tensors the net wants.

    Built from the net's (phase-filtered) layers *before* the net itself, so that the shapes of
    data-layer tops that only the data knows can be passed to `CaffeNet(input_shapes=...)`.

    Args:
        layers: the phase-filtered LayerParameters of the net (data and Input layers are used).
        ctx: phase, rank, world size, seed and base_dir (`source_override` is ignored here).
        source_override: replaces the source of every data layer of this net (see module doc).
        input_data: .npz file for the net's Input blobs.
        device: where batches are moved.
    """

    def __init__(self, layers, ctx: FeedContext, *, source_override: str | None = None,
                 input_data: str | None = None, device: str | torch.device = "cpu") -> None:
        from hovcaffe.caffe.shapes import declared_top_shapes

        self.device = torch.device(device)
        self._rewind_state: dict[str, Any] | None = None
        self.feeds: dict[str, Any] = {}
        inputs: list[tuple[str, tuple[int, ...] | None]] = []
        for layer in layers:
            if layer.type in FED_TYPES:
                self.feeds[layer.name] = self._data_feed(layer, ctx, source_override)
            elif layer.type == "Input":
                inputs += list(zip(layer.top, declared_top_shapes(layer) or []))
        if inputs:
            names = [n for n, _ in inputs]
            if not input_data:
                raise UserInputError(
                    f"the {'TRAIN' if ctx.phase == 0 else 'TEST'} net has Input blobs "
                    f"{names} and no data for them; give an .npz file with arrays named "
                    f"{names} (--input-data FILE.npz)")
            if inputs[0][1] is None:
                raise UserInputError(f"Input blob {names[0]!r} declares no shape in the prototxt")
            path = resolve_path(input_data, ctx.base_dir, what="input data")
            feed = ArrayFileFeed([path], names, int(inputs[0][1][0]), loader=load_npz,
                                 rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed)
            got = feed.shapes()
            for name, declared in inputs:
                if declared is not None and tuple(got[name][1:]) != tuple(declared[1:]):
                    raise ShapeError(f"Input blob {name!r} declares shape {list(declared)}, but "
                                     f"the rows of {input_data!r} have shape {list(got[name][1:])}")
            self.feeds["<input>"] = feed

    @classmethod
    def for_spec(cls, spec, ctx: FeedContext, **kwargs) -> "NetFeeder":
        """The feeder of a `hovcaffe.training.nets.NetSpec` (its layers filtered by its state)."""
        from hovcaffe.caffe.state import filter_net

        return cls(filter_net(spec.param, spec.state, spec.source).layer, ctx, **kwargs)

    @staticmethod
    def _data_feed(layer, ctx: FeedContext, override: str | None):
        if override and layer.type != "HDF5Data":
            found = find_path(override, ctx.base_dir)
            local = str(found) if found is not None else None
            if local and is_hdf5_source(local):
                files = source_files(local, ctx.base_dir, what="HDF5 override")
                batch = batch_size_of(layer)
                if batch < 1:
                    raise UserInputError(f"data layer {layer.name!r} declares no batch_size")
                log.info("feeding %s layer %r from HDF5 %s", layer.type, layer.name, local)
                return ArrayFileFeed(files, list(layer.top), batch, loader=load_h5,
                                     rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed,
                                     transform=simple_transform(layer))
        return make_feed(layer, FeedContext(phase=ctx.phase, rank=ctx.rank,
                                            world_size=ctx.world_size, seed=ctx.seed,
                                            base_dir=ctx.base_dir, source_override=override))

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every fed blob, learnt from the data (the first batch, position unchanged)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for feed in self.feeds.values():
            if hasattr(feed, "shapes"):
                shapes.update(feed.shapes())
                continue
            saved = feed.state_dict()
            batch = next(feed)
            feed.load_state_dict(saved)
            shapes.update({k: tuple(v.shape) for k, v in batch.items()})
        return shapes

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for feed in self.feeds.values():
            try:
                items = next(feed)
            except StopIteration:  # a TEST reader ends each pass; Caffe's data layers wrap around
                items = next(feed)
            for name, tensor in items.items():
                batch[name] = tensor.to(self.device, non_blocking=True)
        return batch

    def pass_samples(self) -> int | None:
        """Samples in this rank's share of one pass over the data (None when a feed cannot say,
        or when the feeds of the net disagree)."""
        counts = set()
        for feed in self.feeds.values():
            count = getattr(feed, "pass_samples", lambda: None)()
            if count is None:
                return None
            counts.add(int(count))
        return counts.pop() if len(counts) == 1 else None

    def rewind(self) -> None:
        """Go back to where the feeds were at the first rewind - their start, for a TEST feeder
        read only by `hovcaffe.training.scoring.score_samples`."""
        if self._rewind_state is None:
            self._rewind_state = self.state_dict()
        else:
            self.load_state_dict(self._rewind_state)

    def state_dict(self) -> dict[str, Any]:
        return {name: feed.state_dict() for name, feed in self.feeds.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, feed in self.feeds.items():
            if name in state:
                feed.load_state_dict(state[name])
            else:
                log.warning("no saved position for data layer %r; it restarts from the "
                            "beginning", name)


def build_fed_net(net_param, phase: int, state, source: str, *, source_override: str | None = None,
                  input_data: str | None = None, device: str = "cpu", need_inputs: bool = True):
    """Build a feeder and then the CaffeNet it feeds (shapes learnt from the data).

    Args:
        net_param, phase, state, source: as for `hovcaffe.net.CaffeNet`.
        source_override, input_data, device: as for `NetFeeder`.
        need_inputs: when False, Input blobs without `input_data` are left to the caller.

    Returns:
        (net, feeder).
    """
    import os

    from hovcaffe.caffe.state import filter_net, merged_state
    from hovcaffe.net import CaffeNet

    st = merged_state(phase, net_param, state)
    layers = filter_net(net_param, st, source).layer
    if not need_inputs and not input_data:
        layers = [lp for lp in layers if lp.type != "Input"]
    base_dir = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    feeder = NetFeeder(layers, FeedContext(phase=phase, base_dir=base_dir),
                       source_override=source_override, input_data=input_data, device=device)
    net = CaffeNet(net_param, phase, state=st, input_shapes=feeder.input_shapes(), source=source)
    return net.to(device), feeder
