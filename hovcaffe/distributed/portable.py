"""Make a solver self-contained before it is shipped to ranks on other machines.

Ranks run in Spark's working directories, possibly on other hosts, so the driver resolves every
file reference the way a local run would (current directory first, then the folder of the file
that names it - `hovcaffe.utils.paths`) and ships the result:

* nets named by path (`net`, `train_net`, `test_net`) are read and inlined as `*_net_param`;
* relative data sources and mean files inside the nets become absolute paths when they exist
  here (URLs and absolute paths are kept), so they mean the same on every rank of a shared
  filesystem - on a cluster they should be URLs every executor can read (hdfs://, s3://).
"""
from __future__ import annotations

import os

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.data_layer_types import FILE_FIELDS as DATA_LAYER_FILE_FIELDS
from hovcaffe.caffe.io import read_net
from hovcaffe.utils.paths import find_path, is_url, resolve_path

#: (layer field, attribute) pairs that name files: the data layers' own, and the transform's mean
FILE_FIELDS = DATA_LAYER_FILE_FIELDS + (("transform_param", "mean_file"),)


def absolute_if_present(path: str, base_dir: str | None) -> str:
    """`path` made absolute by the path rule when it exists here; unchanged otherwise."""
    if not path or is_url(path) or os.path.isabs(path):
        return path
    found = find_path(path, base_dir)
    return os.path.abspath(found) if found is not None else path


def absolutize_net(net: caffe_pb2.NetParameter, base_dir: str | None) -> None:
    """Rewrite relative file references of `net`'s layers in place (see the module docstring)."""
    for layer in net.layer:
        for field, attr in FILE_FIELDS:
            if layer.HasField(field) and getattr(getattr(layer, field), attr):
                sub = getattr(layer, field)
                setattr(sub, attr, absolute_if_present(getattr(sub, attr), base_dir))


def portable_solver(sp: caffe_pb2.SolverParameter, solver_path: str | None) -> caffe_pb2.SolverParameter:
    """A copy of `sp` with its nets inlined and their file references absolute."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(sp)
    solver_dir = os.path.dirname(os.path.abspath(solver_path)) if solver_path else os.getcwd()

    def from_file(path: str, what: str) -> caffe_pb2.NetParameter:
        resolved = resolve_path(path, solver_dir, what=what, named_in=solver_path)
        net = read_net(resolved)
        absolutize_net(net, os.path.dirname(os.path.abspath(resolved)))
        return net

    for path_field, param_field in (("net", "net_param"), ("train_net", "train_net_param")):
        if out.HasField(path_field):
            getattr(out, param_field).CopyFrom(from_file(getattr(out, path_field), path_field))
            out.ClearField(path_field)
        elif out.HasField(param_field):
            absolutize_net(getattr(out, param_field), solver_dir)
    for param in out.test_net_param:
        absolutize_net(param, solver_dir)
    # Caffe orders test nets: every test_net_param, then every test_net - appending keeps that.
    for path in list(out.test_net):
        out.test_net_param.add().CopyFrom(from_file(path, "test_net"))
    out.ClearField("test_net")
    return out


def absolute_path(path: str | None) -> str | None:
    """A plain relative path made absolute against the current directory (URLs kept)."""
    if not path or is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))
