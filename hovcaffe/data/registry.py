"""Feeds for Caffe data layers, registered by Caffe layer type.

A *feed* turns one data layer of a prototxt (HDF5Data, Data, ImageData, MemoryData, CoSData, ...)
into an endless (TRAIN) or finite-per-pass (TEST) iterator of batches: dict top name -> Tensor.
The net never opens data itself; the training loop asks `make_feed` for each data layer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Protocol

import torch

from hovcaffe.errors import UnsupportedLayerError


@dataclasses.dataclass(frozen=True)
class FeedContext:
    """Where and how a feed runs.

    Attributes:
        phase: caffe_pb2.TRAIN (0) or caffe_pb2.TEST (1).
        rank, world_size: this process's shard of the data.
        seed: base random seed (shuffles, crops, mirrors); None = nondeterministic.
        base_dir: folder of the file that names the source (relative paths are tried against the
            current directory first, then against this folder, as documented in the README).
        source_override: a URL replacing the layer's own source (CLI -input / --train-data).
    """

    phase: int
    rank: int = 0
    world_size: int = 1
    seed: int | None = None
    base_dir: str = "."
    source_override: str | None = None


class Feed(Protocol):
    """A batch iterator with a resumable position."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...

    def __next__(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


FeedFactory = Callable[..., Feed]
_FEEDS: dict[str, FeedFactory] = {}


def register_feed(layer_type: str) -> Callable[[FeedFactory], FeedFactory]:
    def deco(fn: FeedFactory) -> FeedFactory:
        if layer_type in _FEEDS:
            raise ValueError(f"feed for {layer_type!r} registered twice")
        _FEEDS[layer_type] = fn
        return fn

    return deco


def list_feeds() -> list[str]:
    return sorted(_FEEDS)


def make_feed(layer, ctx: FeedContext) -> Feed:
    """The feed for data layer `layer` (a caffe_pb2.LayerParameter)."""
    _load_builtin_feeds()
    try:
        factory = _FEEDS[layer.type]
    except KeyError:
        raise UnsupportedLayerError(
            f"data layer {layer.name!r} has type {layer.type!r}, for which hovcaffe has no data "
            f"feed; supported data layer types: {', '.join(list_feeds())}") from None
    return factory(layer, ctx)


def _load_builtin_feeds() -> None:
    # Imported lazily so that `import hovcaffe.data.registry` stays cheap; each module registers itself.
    import hovcaffe.data.feeds  # noqa: F401
    import hovcaffe.data.hdf5  # noqa: F401
    import hovcaffe.data.dense_image  # noqa: F401
    import hovcaffe.data.annotated  # noqa: F401
