"""`hovcaffe test`: score a trained model like `caffe test` (mean of each output blob), or by
mAP when the net ends in DetectionEvaluate (as the solver's `eval_type: "detection"` does)."""
from __future__ import annotations

import json

import click

from hovcaffe.commands.runtime_options import fast_option, precision_options
from hovcaffe.utils.paths import PATH_RULE_HELP

#: `SolverParameter.ap_version` values (hovcaffe.training.detection_scoring.AP_VERSIONS; written
#: out so that `hovcaffe --help` does not import the scoring module and torch)
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


@click.command(name="test", help=f"""Score a model: run N forward passes in TEST phase and print the
mean of every net output (e.g. accuracy, loss), like `caffe test`. A detection net (its outputs
from DetectionEvaluate layers) is scored by mean average precision over the N batches, as the
solver's `eval_type: "detection"` test pass does, with --ap-version (or the -solver's).

\b
  hovcaffe test -model lenet_train_test.prototxt -weights lenet_iter_10000.caffemodel -iterations 100
  hovcaffe test -model test.prototxt -weights ssd.caffemodel -iterations 6 --ap-version 11point

{PATH_RULE_HELP}""")
@click.option("-model", "--model", required=True, type=click.Path(dir_okay=False),
              help="The net prototxt.")
@click.option("-weights", "--weights", multiple=True,
              help="weights to load (comma-separated or repeated): .caffemodel, .caffemodel.h5, "
                   ".safetensors or a torch state_dict .pt/.pth.")
@click.option("-iterations", "--iterations", default=50, show_default=True,
              type=click.IntRange(min=1), help="Number of batches.")
@click.option("-stage", "--stage", default="", help="Comma-separated NetState stages.")
@click.option("-level", "--level", default=0, show_default=True, help="NetState level.")
@click.option("--test-data", help="Replace the source of the net's data layers (see `hovcaffe "
              "train --help`).")
@click.option("--input-data", type=click.Path(dir_okay=False),
              help=".npz with one array per Input blob.")
@click.option("--ap-version", type=click.Choice(AP_VERSIONS),
              help="Detection nets: the average precision (default: the -solver's ap_version, "
                   "else SSD's default Integral).")
@click.option("-solver", "--solver", type=click.Path(dir_okay=False),
              help="Detection nets: take ap_version from this solver prototxt.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@click.option("--json", "as_json", is_flag=True, help="Print the means as JSON.")
@fast_option
@precision_options(amp=False)
def cli(model, weights, iterations, stage, level, test_data, input_data, ap_version, solver,
        device, as_json, fast, tf32) -> None:
    import torch

    from hovcaffe.runtime.fastpath import enable_fast_path_fed
    from hovcaffe.runtime.precision import Precision, apply_precision
    from hovcaffe.runtime.process import apply_process_settings
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net, read_solver
    from hovcaffe.caffe.state import net_state
    from hovcaffe.errors import NetDefinitionError
    from hovcaffe.training.detection_scoring import detection_outputs, detection_test
    from hovcaffe.training.feeder import build_fed_net
    from hovcaffe.training.scoring import run_test
    from hovcaffe.weights import load_weights

    apply_process_settings()
    apply_precision(device, Precision(tf32=tf32))
    stages = [s for s in stage.split(",") if s]
    net, feeder = build_fed_net(read_net(model), caffe_pb2.TEST,
                                net_state(caffe_pb2.TEST, level, stages), model,
                                source_override=test_data, input_data=input_data, device=device)
    if not weights:
        click.echo("warning: no -weights given; testing the fillers' initial weights", err=True)
    load_weights(net, weights)
    enable_fast_path_fed(net, fast, feeder, training=False, planned_passes=iterations)
    detection = detection_outputs(net)
    if detection:
        if len(detection) != len(net.output_names):
            others = sorted(set(net.output_names) - set(detection))
            raise NetDefinitionError(f"{model}: outputs {others} do not come from DetectionEvaluate; "
                                     "a detection net is scored by mAP and every output must be "
                                     "a DetectionEvaluate table")
        if ap_version is None:  # the solver's, else the field's default, as training reads it
            ap_version = (read_solver(solver) if solver else caffe_pb2.SolverParameter()).ap_version
        with torch.inference_mode():
            means, loss = detection_test(net, feeder, iterations, None, ap_version=ap_version,
                                         gather=lambda tallies: [tallies], compute_loss=True)
    else:
        with torch.inference_mode():
            means, loss = run_test(net, feeder, iterations, compute_loss=True)
    result = {name: (m.tolist() if m.size > 1 else float(m[0])) for name, m in means.items()}
    if as_json:
        extra = {"ap_version": ap_version} if detection else {}
        click.echo(json.dumps({"iterations": iterations, "loss": loss, "outputs": result, **extra}))
        return
    click.echo(f"Loss: {loss:.6g}")
    if detection:
        click.echo(f"mean average precision ({ap_version}) of {iterations} batches:")
    for name, value in result.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            click.echo(f"{name} = {v:.6g}")
