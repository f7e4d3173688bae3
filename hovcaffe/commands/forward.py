"""`hovcaffe forward NET --weights W --input IN.npz --output OUT.npz [--phase] [--grads]`.

One forward pass on the arrays of IN.npz (keyed by input blob name); OUT.npz gets every blob's
final value keyed by blob name - the layout of the oracle's `blobs.npz`. With `--grads` it also
backpropagates the weighted loss and adds each parameter's gradient as `<layer>/<index>` and each
blob's diff as `blob_diff/<blob>` - the layout of `grads.npz` - to OUT.npz, or to the file given
by `--grads-output`. This interface is the stable way to compare hovcaffe with Caffe.
"""
from __future__ import annotations

import os

import click
import numpy as np
import torch

from hovcaffe.commands.runtime_options import fast_option, precision_options
from hovcaffe.errors import UserInputError


def _load_inputs(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except FileNotFoundError:
        raise UserInputError(f"{path}: input file not found") from None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable .npz file: {exc}") from None


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    from hovcaffe.utils.fileio import atomic_open
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


@click.command("forward")
@click.argument("net_path", metavar="NET.prototxt", type=click.Path(dir_okay=False))
@click.option("-weights", "--weights", default=None,
              help="Weights to load, comma-separated (later files overwrite earlier): "
                   ".caffemodel, .caffemodel.h5, .safetensors or a torch state_dict .pt/.pth.")
@click.option("-input", "--input", "input_paths", required=True, multiple=True, metavar="IN.npz",
              help="Arrays keyed by input blob name (Input / data-layer tops); repeatable, "
                   "later files add to (and override) earlier ones.")
@click.option("-output", "--output", "output_path", required=True, metavar="OUT.npz",
              help="Where to write every blob's final value, keyed by blob name.")
@click.option("-phase", "--phase", type=click.Choice(["TEST", "TRAIN"], case_sensitive=False),
              default="TEST", show_default=True, help="Which view of the net to build.")
@click.option("-grads", "--grads", is_flag=True,
              help="Also backpropagate the weighted loss and write param and blob diffs.")
@click.option("--grads-output", default=None, metavar="GRADS.npz",
              help="Write the diffs here instead of into OUT.npz.")
@click.option("-stage", "--stage", multiple=True, help="NetState stage (repeatable).")
@click.option("-level", "--level", type=int, default=0, help="NetState level.")
@click.option("--allow-python-layers", is_flag=True,
              help="Build Python layers that name a hovcaffe CaffeLayer replacement.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@fast_option
@precision_options(amp=False)
def cli(net_path: str, weights: str | None, input_paths: tuple[str, ...], output_path: str, phase: str,
        grads: bool, grads_output: str | None, stage: tuple[str, ...], level: int,
        allow_python_layers: bool, device: str, fast: str, tf32: bool) -> None:
    """One forward (and backward) pass on arrays from an .npz file.

    Without --grads the pass runs under inference_mode, on the fast path when --fast picks it;
    with --grads it is eager (the diffs need every in-place version of every blob).
    """
    from hovcaffe.caffe.io import read_net
    from hovcaffe.caffe.state import net_state
    from hovcaffe.diffs import PassResult, run_pass
    from hovcaffe.net import CaffeNet
    from hovcaffe.runtime.fastpath import EAGER, enable_fast_path
    from hovcaffe.runtime.precision import Precision, apply_precision
    from hovcaffe.weights import load_weights

    arrays: dict[str, np.ndarray] = {}
    for path in input_paths:
        arrays.update(_load_inputs(path))
    apply_precision(device, Precision(tf32=tf32))
    net = CaffeNet(read_net(net_path), phase.upper(), state=net_state(phase, level, stage),
                   input_shapes={k: v.shape for k, v in arrays.items()}, source=net_path,
                   allow_python_layers=allow_python_layers).to(device)
    if weights:
        report = load_weights(net, weights)
        click.echo(f"weights: {report.summary()}", err=True)
    inputs = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    if grads:
        res = run_pass(net, inputs, backward=True)
    elif enable_fast_path(net, fast, inputs, training=False, planned_passes=1).path != EAGER:
        with torch.inference_mode():
            res = PassResult(blobs=net(**inputs))   # the final value of every blob, as run_pass
    else:
        with torch.inference_mode():
            res = run_pass(net, inputs)
    out = {k: v.detach().cpu().numpy() for k, v in res.blobs.items()}
    if grads:
        diffs = {k: v.detach().cpu().numpy() for k, v in res.grads.items()}
        if grads_output:
            _save_npz(grads_output, diffs)
        else:
            clash = sorted(set(diffs) & set(out))
            if clash:
                raise UserInputError(f"blob names {clash} collide with gradient keys; "
                                     "use --grads-output to write the diffs to their own file")
            out.update(diffs)
        click.echo(f"loss: {float(res.loss):.9g}", err=True)
    _save_npz(output_path, out)
    click.echo(f"wrote {len(res.blobs)} blobs{' and diffs' if grads else ''} to "
               f"{os.fspath(output_path)}", err=True)
