"""`hovcaffe inspect NET`: a table of a net's layers with shapes, parameters and MACs.

Shapes come from building the net (no weights needed): data and Input layers take their
shapes from the prototxt, `--input-shape name=N,C,H,W` supplies (or overrides) the ones
that depend on absent data, such as HDF5Data tops.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Sequence

import click

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.errors import ShapeError, UserInputError

Shape = tuple[int, ...]


@dataclass
class LayerRow:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    top_shapes: list[list[int] | None]
    params: int = 0
    param_shapes: list[list[int]] = field(default_factory=list)
    lr_mult: list[float | None] = field(default_factory=list)
    decay_mult: list[float | None] = field(default_factory=list)
    macs: int = 0
    weights: str = ""           # with --weights: "loaded" / "missing" / "no params"


@dataclass
class NetSummary:
    net: str
    phase: str
    stages: list[str]
    inputs: dict[str, list[int] | None]
    outputs: list[str]
    layers: list[LayerRow]
    total_params: int
    learnable_params: int
    batch_size: int | None
    macs: int
    macs_per_sample: int | None
    weights: dict[str, list[str]] | None = None
    # blob -> loss weight: what the objective sums (Caffe's anonymous loss tops included)
    losses: dict[str, float] = field(default_factory=dict)


class InputShapeError(UserInputError):
    """A data layer's top shape is unknown and was not supplied with --input-shape."""


def parse_input_shape(spec: str) -> tuple[str, Shape]:
    """`name=1,3,224,224` -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = spec.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise UserInputError(f"--input-shape {spec!r}: expected NAME=D0,D1,... "
                             "(e.g. data=64,1,28,28)")
    return name.strip(), shape


def known_input_shapes(view: pb.NetParameter, given: dict[str, Shape]
                       ) -> tuple[dict[str, Shape], list[str]]:
    """Shapes of the data / Input tops of the filtered net `view`: `given`, then the prototxt.

    Returns:
        (shapes, HDF5 tops left to the net builder, which reads them from the HDF5 files
        when the source list is there).

    Raises:
        InputShapeError: a data top whose shape only the data can tell, not in `given`.
    """
    from hovcaffe.caffe.data_layer_types import FED_TYPES
    from hovcaffe.caffe.shapes import declared_top_shapes

    shapes: dict[str, Shape] = {}
    missing: list[str] = []
    from_files: list[str] = []
    for layer in view.layer:
        if layer.type != "Input" and layer.type not in FED_TYPES:
            continue
        declared = declared_top_shapes(layer)
        for top, shape in zip(layer.top, declared):
            if top in given:
                shapes[top] = given[top]
            elif shape is not None:
                shapes[top] = shape
            elif layer.type == "HDF5Data":
                from_files.append(f"{top!r} (top of {layer.type} layer {layer.name!r})")
            else:
                missing.append(f"{top!r} (top of {layer.type} layer {layer.name!r})")
    unknown = set(given) - set(shapes)
    if unknown:
        raise UserInputError(f"--input-shape names {', '.join(sorted(unknown))}, which "
                             "is not a data or Input top of this net view")
    if missing:
        raise InputShapeError(
            "the shape of " + ", ".join(missing) + " depends on data that is not read by "
            "inspect; give it with --input-shape NAME=N,C,H,W")
    return shapes, from_files


def summarize(net_param: pb.NetParameter, phase: str = "TEST", *, stages: Sequence[str] = (),
              level: int = 0, input_shapes: dict[str, Shape] | None = None,
              weights: str | None = None, source: str = "",
              allow_python_layers: bool = False) -> NetSummary:
    """Build the `phase` view of `net_param` and describe every layer of it."""
    from hovcaffe.caffe.check import check_net
    from hovcaffe.caffe.state import filter_net, merged_state, net_state, phase_value
    from hovcaffe.layers.registry import check_layer_type
    from hovcaffe.net import CaffeNet

    ph = phase_value(phase)
    state = merged_state(ph, net_param, net_state(ph, level, stages))
    check_net(net_param, source, state=state,
              check_type=partial(check_layer_type, allow_python_layers=allow_python_layers))
    view = filter_net(net_param, state, source)
    shapes, from_files = known_input_shapes(view, dict(input_shapes or {}))
    try:
        net = CaffeNet(net_param, ph, state=state, input_shapes=shapes, source=source,
                       allow_python_layers=allow_python_layers)
    except ShapeError as exc:
        if not from_files or "not known" not in str(exc):
            raise
        raise InputShapeError(
            "the shape of " + ", ".join(from_files) + " depends on HDF5 files that could not "
            "be read; give it with --input-shape NAME=N,C,... (e.g. data=64,1,28,28)") from None
    report = None
    if weights:
        from hovcaffe.weights import load_weights
        report = load_weights(net, weights)   # comma-separated files / safetensors, as elsewhere

    learn = {lp.name: lp for lp in net.learnable_params()}
    rows: list[LayerRow] = []
    seen: set[int] = set()
    total = learnable = macs = 0
    for lp in learn.values():
        if lp.lr_mult != 0:
            learnable += lp.param.numel()
    # net.layer_keys: the module key of each layer (unique, '.'-free), not its prototxt name.
    for lparam, key in zip(net.net_param.layer, net.layer_keys):
        row = LayerRow(name=lparam.name, type=lparam.type, bottoms=list(lparam.bottom),
                       tops=list(lparam.top),
                       top_shapes=[_shape(net.blob_shapes.get(t)) for t in lparam.top])
        rows.append(row)
        if key not in net.layers:  # Input and data layers: net inputs, no module
            continue
        layer = net.layers[key]
        for i, blob in enumerate(layer.blobs):
            row.param_shapes.append(list(blob.shape))
            if id(blob) not in seen:  # shared params count once
                seen.add(id(blob))
                row.params += blob.numel()
            spec = learn.get(f"{key}/{i}")
            row.lr_mult.append(spec.lr_mult if spec else None)
            row.decay_mult.append(spec.decay_mult if spec else None)
        total += row.params
        row.macs = int(layer.macs([tuple(net.blob_shapes[b]) for b in lparam.bottom]))
        macs += row.macs
    if report is not None:
        _mark_weights(rows, report)
    batch = _batch_size(net, shapes)
    return NetSummary(
        net=net_param.name, phase=pb.Phase.Name(ph), stages=list(state.stage),
        inputs={n: _shape(net.blob_shapes.get(n)) for n in net.input_names},
        outputs=list(net.output_names), layers=rows, total_params=total,
        learnable_params=learnable, batch_size=batch, macs=macs,
        macs_per_sample=(macs // batch) if batch else None,
        weights=None if report is None else {
            k: sorted(getattr(report, k)) for k in ("copied", "skipped", "missing", "mismatched")
            if hasattr(report, k)},
        losses=dict(net.loss_weights))


def _shape(shape) -> list[int] | None:
    return None if shape is None else [int(d) for d in shape]


def _batch_size(net, shapes: dict[str, Shape]) -> int | None:
    for name in net.input_names:
        shape = shapes.get(name) or net.blob_shapes.get(name)
        if shape:
            return int(shape[0])
    return None


def _mark_weights(rows: list[LayerRow], report) -> None:
    copied = set(getattr(report, "copied", ()))
    for row in rows:
        if not row.param_shapes:
            row.weights = "-"
        else:
            row.weights = "loaded" if row.name in copied else "filler"


# ----------------------------------------------------------------------------- output

def _fmt_shape(shape: list[int] | None) -> str:
    return "?" if shape is None else ("scalar" if not shape else "x".join(map(str, shape)))


def _fmt_mults(values: list[float | None]) -> str:
    if not values:
        return ""
    return "/".join("-" if v is None else f"{v:g}" for v in values)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def render_table(summary: NetSummary, width: int | None = None) -> None:
    """Print `summary` as a rich table to stdout."""
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (a pipe, a file, a test): wide enough that rows do not wrap.
    console = Console(width=width or (None if sys.stdout.isatty() else 160), soft_wrap=False)
    title = f"{summary.net or '(unnamed net)'} - {summary.phase}"
    if summary.stages:
        title += f" (stages: {', '.join(summary.stages)})"
    table = Table(title=title, show_lines=False, header_style="bold")
    for col, just in (("layer", "left"), ("type", "left"), ("bottoms -> tops", "left"),
                      ("top shapes", "left"), ("params", "right"), ("lr", "right"),
                      ("decay", "right"), ("MACs", "right")):
        table.add_column(col, justify=just, overflow="fold")
    if summary.weights is not None:
        table.add_column("weights")
    for row in summary.layers:
        cells = [row.name, row.type,
                 f"{', '.join(row.bottoms) or '-'} -> {', '.join(row.tops) or '-'}",
                 ", ".join(_fmt_shape(s) for s in row.top_shapes),
                 f"{row.params:,}" if row.params else "", _fmt_mults(row.lr_mult),
                 _fmt_mults(row.decay_mult), _human(row.macs) if row.macs else ""]
        if summary.weights is not None:
            cells.append(row.weights)
        table.add_row(*cells)
    console.print(table)
    ins = ", ".join(f"{k} {_fmt_shape(v)}" for k, v in summary.inputs.items())
    console.print(f"inputs: {ins or '-'}")
    console.print(f"outputs: {', '.join(summary.outputs) or '-'}")
    if summary.losses:
        console.print("loss: " + " + ".join(
            f"{w:g} x {b}" + (" (anonymous top of a loss layer without `top`; Caffe does not "
                              "list it as a net output)" if b.startswith("(") else "")
            for b, w in summary.losses.items()))
    console.print(f"parameters: {summary.total_params:,} ({summary.learnable_params:,} "
                  f"learnable, lr_mult != 0)")
    per = summary.macs_per_sample
    console.print(f"MACs: {summary.macs:,} per forward pass"
                  + (f", {per:,} per sample (batch {summary.batch_size})" if per is not None else ""))
    if summary.weights is not None:
        w = summary.weights
        console.print(f"weights: {len(w.get('copied', []))} layers loaded, "
                      f"{len(w.get('missing', []))} layers kept their filler values, "
                      f"{len(w.get('skipped', []))} file layers not in the net")


# ----------------------------------------------------------------------------- command

@click.command("inspect", help="Table of layers, blob shapes, parameters and MACs of a net.")
@click.argument("net_file", metavar="NET", type=click.Path(dir_okay=False))
@click.option("-weights", "--weights", default=None, metavar="CAFFEMODEL",
              help="Also load these weights and show which layers got them.")
@click.option("-phase", "--phase", default="TEST", show_default=True,
              type=click.Choice(["TRAIN", "TEST"], case_sensitive=False))
@click.option("-stage", "--stage", "stages", multiple=True,
              help="NetState stage (repeatable, or comma-separated).")
@click.option("-level", "--level", default=0, show_default=True, type=int)
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=N,C,H,W",
              help="Shape of a data/Input top the prototxt does not fix (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--allow-python-layers", is_flag=True,
              help="Accept Python layers (they import and run code named in the prototxt).")
def cli(net_file: str, weights: str | None, phase: str, stages: tuple[str, ...], level: int,
        input_shape: tuple[str, ...], as_json: bool, allow_python_layers: bool) -> None:
    net_param = _read_net_not_solver(net_file)
    given = dict(parse_input_shape(s) for s in input_shape)
    stage_list = [s for item in stages for s in item.split(",") if s]
    summary = summarize(net_param, phase.upper(), stages=stage_list, level=level,
                        input_shapes=given, weights=weights, source=net_file,
                        allow_python_layers=allow_python_layers)
    if as_json:
        click.echo(json.dumps(asdict(summary), indent=2, default=_json_default))
    else:
        render_table(summary)


def _read_net_not_solver(path: str) -> pb.NetParameter:
    """read_net, but a solver prototxt given by mistake is named as such, with its net."""
    from hovcaffe.caffe.io import parse_solver, read_net
    from hovcaffe.errors import PrototxtError

    try:
        return read_net(path)
    except PrototxtError as net_error:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                solver = parse_solver(fh.read(), path)
        except (PrototxtError, OSError):
            raise net_error from None
        nets = [solver.net, solver.train_net, *solver.test_net]
        named = ", ".join(n for n in nets if n)
        raise UserInputError(
            f"{path} is a solver prototxt (SolverParameter), not a net; inspect its net"
            + (f": {named}" if named else " (it names none; its net is inline in net_param)")
        ) from None


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["cli", "summarize", "NetSummary", "LayerRow", "parse_input_shape",
           "known_input_shapes", "render_table"]
