"""The files a CaffeModel is made of, kept as files (never pickled into stage metadata).

========================  ==========================================================
``net.prototxt``          the net as trained (train/val form); transform derives its TEST view
``weights.caffemodel``    Caffe's binary weights (V2 NetParameter), readable by BVLC Caffe
``solver.prototxt``       the solver used by fit (absent for models made from files)
``history.csv``           the training metrics CSV (absent for models made from files)
``mean.binaryproto``      the TEST data layer's ``mean_file``, when it has one; the stored
                          ``net.prototxt`` names it by this relative name
========================  ==========================================================

The stage metadata records a manifest (size and SHA-256 of each file); loading checks it, so a
truncated copy fails with the file's name instead of predicting garbage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Mapping

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.io import parse_net, to_prototxt
from hovcaffe.data import storage
from hovcaffe.errors import UserInputError, WeightsError
from hovcaffe.ml.deploy import test_view

log = logging.getLogger(__name__)

NET_FILE = "net.prototxt"
WEIGHTS_FILE = "weights.caffemodel"
SOLVER_FILE = "solver.prototxt"
HISTORY_FILE = "history.csv"
MEAN_FILE = "mean.binaryproto"
KNOWN_FILES = (NET_FILE, WEIGHTS_FILE, SOLVER_FILE, HISTORY_FILE, MEAN_FILE)


def read_url(url: str, what: str, base_dir: str | None = None) -> bytes:
    """Bytes of the file at `url` (path or URL); DataSourceError naming `what` and the URL."""
    return storage.require(url, base_dir, what=what).read_bytes()


@dataclasses.dataclass
class ModelFiles:
    """File name -> content of one model (see the module docstring)."""

    files: dict[str, bytes]
    origin: str = "<memory>"

    def __post_init__(self):
        for name in (NET_FILE, WEIGHTS_FILE):
            if name not in self.files:
                raise UserInputError(f"model files at {self.origin} lack {name}")

    @property
    def net_param(self) -> pb.NetParameter:
        return parse_net(self.files[NET_FILE].decode("utf-8"), f"{self.origin}/{NET_FILE}")

    @property
    def weights(self) -> bytes:
        return self.files[WEIGHTS_FILE]

    def text(self, name: str) -> str | None:
        data = self.files.get(name)
        return None if data is None else data.decode("utf-8")

    @classmethod
    def from_sources(cls, net_url: str, weights_url: str, *, solver_url: str | None = None,
                     history_url: str | None = None) -> "ModelFiles":
        """Collect a model's files from where they are; a mean_file the net names is copied in.

        Raises:
            UserInputError: a file is missing; WeightsError: the weights are unreadable (any
                `hovcaffe.weights.WEIGHT_FORMATS`, stored as a caffemodel).
        """
        from hovcaffe.weights import caffemodel_bytes

        net_text = read_url(net_url, "net prototxt").decode("utf-8")
        net = parse_net(net_text, net_url)
        weights = caffemodel_bytes(read_url(weights_url, "weights"), weights_url)  # fail now, not on the executors
        files = {WEIGHTS_FILE: weights}
        base = storage.resolve(net_url).path.rsplit("/", 1)[0]
        mean_url = _mean_file(test_view(net))
        if mean_url:
            files[MEAN_FILE] = read_url(mean_url, "transform_param mean_file", base)
            net = _with_mean_file(net, mean_url, MEAN_FILE)
        files[NET_FILE] = to_prototxt(net).encode()
        if solver_url:
            files[SOLVER_FILE] = read_url(solver_url, "solver prototxt")
        if history_url and storage.resolve(history_url).exists():
            files[HISTORY_FILE] = read_url(history_url, "metrics CSV")
        return cls(files, origin=net_url.rsplit("/", 1)[0] or ".")

    def manifest(self) -> dict[str, dict[str, object]]:
        return {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for name, data in sorted(self.files.items())}

    def write(self, folder_url: str) -> None:
        """Write every file into `folder_url` (created when missing)."""
        folder = storage.resolve(folder_url)
        folder.fs.create_dir(folder.path, recursive=True)
        for name, data in self.files.items():
            folder.child(name).write_bytes(data)

    @classmethod
    def read(cls, folder_url: str, manifest: Mapping[str, Mapping[str, object]]) -> "ModelFiles":
        """The files listed in `manifest`, checked against their recorded size and SHA-256.

        Raises:
            WeightsError: a file is missing or differs from what was saved.
        """
        folder = storage.resolve(folder_url)
        files = {}
        for name, expected in manifest.items():
            loc = folder.child(name)
            if not loc.exists():
                raise WeightsError(f"saved model at {folder_url}: file {name} is missing")
            data = loc.read_bytes()
            if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise WeightsError(f"saved model at {folder_url}: {name} has {len(data)} bytes and "
                                   f"another checksum than the {expected['bytes']} bytes saved; the "
                                   "copy is damaged or was changed")
            files[name] = data
        return cls(files, origin=folder_url)


def _mean_file(net: pb.NetParameter) -> str | None:
    names = {l.transform_param.mean_file for l in net.layer if l.transform_param.HasField("mean_file")}
    names |= {t.transform_param.mean_file for l in net.layer if l.type == "CoSData"
              for t in l.cos_data_param.top if t.transform_param.HasField("mean_file")}
    if len(names) > 1:
        raise UserInputError(f"the TEST net's data layers name several mean files ({sorted(names)}); "
                             "a model keeps one")
    return names.pop() if names else None


def _with_mean_file(net: pb.NetParameter, old: str, new: str) -> pb.NetParameter:
    out = pb.NetParameter()
    out.CopyFrom(net)
    params = [l.transform_param for l in out.layer] + [
        t.transform_param for l in out.layer for t in l.cos_data_param.top]
    for param in params:
        if param.HasField("mean_file") and param.mean_file == old:
            param.mean_file = new
    return out
