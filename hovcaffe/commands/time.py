"""`hovcaffe time`: per-layer forward/backward timings, like `caffe time`."""
from __future__ import annotations

import json
import time as _time

import click

from hovcaffe.commands.runtime_options import fast_option, precision_options
from hovcaffe.errors import NetDefinitionError


def time_net(net, inputs: dict, iterations: int, *, per_layer: bool = True) -> dict:
    """Time `iterations` forward+backward passes of `net` on fixed `inputs`.

    Without `per_layer` no hooks are set (a compiled net runs its layers as one graph, so only
    the totals mean anything) and every layer's times are reported as 0.

    Forward time of a layer: from its forward pre-hook to its forward hook. Backward time: from
    the moment the gradient of its first output is ready (a tensor hook) to the moment the next
    layer's output gradient is ready - the layer-by-layer sequence Caffe's `time` reports.

    Returns:
        {"layers": {name: {"forward_ms", "backward_ms"}}, "forward_ms", "backward_ms",
         "forward_backward_ms", "total_ms", "iterations", "has_backward"}.
    """
    import torch

    names = list(net.layers.keys())
    fwd = {n: 0.0 for n in names}
    bwd = {n: 0.0 for n in names}
    starts: dict[str, float] = {}
    events: list[tuple[float, str]] = []
    seen: set[str] = set()

    def pre(name):
        def hook(module, args):
            starts[name] = _time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, outputs):
            fwd[name] += _time.perf_counter() - starts[name]
            seen.discard(name)
            for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    out.register_hook(_grad_ready(name))
        return hook

    def _grad_ready(name):
        def hook(grad):
            if name not in seen:  # first output gradient of this layer
                seen.add(name)
                events.append((_time.perf_counter(), name))
        return hook

    handles = []
    for name, layer in net.layers.items() if per_layer else ():
        handles.append(layer.register_forward_pre_hook(pre(name)))
        handles.append(layer.register_forward_hook(post(name)))

    def one_pass(timed: bool):
        events.clear()
        seen.clear()
        t0 = _time.perf_counter()
        blobs = net(**inputs)
        loss = net.objective(blobs)
        t1 = _time.perf_counter()
        has_backward = loss.requires_grad
        if has_backward:
            loss.backward()
        t2 = _time.perf_counter()
        net.zero_grad(set_to_none=True)
        if timed and has_backward:
            ordered = sorted(events) + [(t2, "")]
            for (t, name), (t_next, _) in zip(ordered, ordered[1:]):
                bwd[name] += t_next - t
        return t1 - t0, t2 - t1, has_backward

    try:
        one_pass(False)  # warm-up, as caffe time does one initial Forward/Backward
        for n in names:
            fwd[n] = 0.0
        total_f = total_b = 0.0
        has_backward = False
        start = _time.perf_counter()
        for _ in range(iterations):
            f, b, has_backward = one_pass(True)
            total_f, total_b = total_f + f, total_b + b
        total = _time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    ms = 1000.0 / iterations
    return {
        "iterations": iterations, "has_backward": has_backward,
        "layers": {n: {"forward_ms": fwd[n] * ms, "backward_ms": bwd[n] * ms} for n in names},
        "forward_ms": total_f * ms, "backward_ms": total_b * ms,
        "forward_backward_ms": (total_f + total_b) * ms, "total_ms": total * 1000.0,
    }


def timing_inputs(net, feeder, device="cpu") -> dict:
    """One batch from the data layers' feeds, and zeros for Input blobs (as `caffe time` gets)."""
    import torch

    batch = feeder.next_batch() if feeder.feeds else {}
    return {name: batch[name] if name in batch else torch.zeros(net.blob_shapes[name],
                                                                 device=device)
            for name in net.input_names}


@click.command(name="time")
@click.option("-model", "--model", required=True, type=click.Path(dir_okay=False),
              help="The net prototxt (Input blobs are fed zeros, data layers one batch of their "
                   "data).")
@click.option("--data", "data_override", help="Replace the data layers' source (see `hovcaffe "
              "train --help`).")
@click.option("-iterations", "--iterations", default=50, show_default=True,
              type=click.IntRange(min=1), help="Timed forward+backward passes.")
@click.option("-phase", "--phase", type=click.Choice(["TRAIN", "TEST"]), default="TRAIN",
              show_default=True, help="Phase the net is built in.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@click.option("--json", "as_json", is_flag=True, help="Print the timings as JSON.")
@fast_option
@precision_options(amp=True)
def cli(model, data_override, iterations, phase, device, as_json, fast, tf32, amp) -> None:
    """Per-layer forward/backward time in ms, then the averages, like `caffe time`."""
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.runtime.fastpath import EAGER, enable_fast_path
    from hovcaffe.runtime.precision import Precision, apply_precision, autocast
    from hovcaffe.runtime.process import apply_process_settings
    from hovcaffe.training.feeder import build_fed_net

    apply_process_settings()  # time the net as train runs it (the same process settings)
    precision = Precision(tf32=tf32, amp=amp)
    apply_precision(device, precision)
    ph = caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST
    net, feeder = build_fed_net(read_net(model), ph, None, model, source_override=data_override,
                                device=device, need_inputs=False)
    if not net.layers:
        raise NetDefinitionError(f"{model}: the {phase} net has no layers to time")
    inputs = timing_inputs(net, feeder, device)
    choice = enable_fast_path(net, fast, inputs, training=True, planned_passes=iterations)
    with autocast(device, precision):
        result = time_net(net, inputs, iterations, per_layer=choice.path == EAGER)
    result["fast_path"] = choice.path
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    width = max(len(n) for n in result["layers"])
    if choice.path == EAGER:
        click.echo("Average time per layer:")
        for name, t in result["layers"].items():
            click.echo(f"{name:>{width}}\tforward: {t['forward_ms']:.4f} ms.")
            click.echo(f"{name:>{width}}\tbackward: {t['backward_ms']:.4f} ms.")
    else:
        click.echo(f"(fast path {choice.path}: the layers run as one graph, no per-layer times)")
    click.echo(f"Average Forward pass: {result['forward_ms']:.4f} ms.")
    click.echo(f"Average Backward pass: {result['backward_ms']:.4f} ms.")
    click.echo(f"Average Forward-Backward: {result['forward_backward_ms']:.4f} ms.")
    click.echo(f"Total Time: {result['total_ms']:.4f} ms.")
    if not result["has_backward"]:
        click.echo("(the net has no loss, so there is no backward pass to time)")
