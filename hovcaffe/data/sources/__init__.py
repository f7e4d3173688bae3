"""Converter sources, by kind (the ``hovcaffe convert <kind>`` names)."""
from __future__ import annotations

from hovcaffe.data.sources.annoset import AnnosetSource
from hovcaffe.data.sources.base import Encoded, Record, RecordError, Source, SourcePlan
from hovcaffe.data.sources.cifar import CifarSource
from hovcaffe.data.sources.hdf5list import Hdf5ListSource
from hovcaffe.data.sources.imagelist import ImageListSource
from hovcaffe.data.sources.lmdb_source import LmdbSource
from hovcaffe.data.sources.mnist import MnistSource

SOURCES: dict[str, type] = {
    "lmdb": LmdbSource,
    "imagelist": ImageListSource,
    "hdf5": Hdf5ListSource,
    "mnist": MnistSource,
    "cifar": CifarSource,
    "annoset": AnnosetSource,
}

__all__ = ["SOURCES", "AnnosetSource", "Source", "SourcePlan", "Record", "RecordError", "Encoded", "CifarSource",
           "Hdf5ListSource", "ImageListSource", "LmdbSource", "MnistSource"]
