"""`hovcaffe export NET.prototxt --weights W --format onnx|torchscript|caffemodel -o OUT`."""
from __future__ import annotations

import click

from hovcaffe.errors import UserInputError


@click.command("export")
@click.argument("net_path", metavar="NET.prototxt", type=click.Path(dir_okay=False))
@click.option("-weights", "--weights", default=None,
              help="Caffemodel(s) to load, comma-separated (later files overwrite earlier).")
@click.option("-format", "--format", "fmt", required=True,
              type=click.Choice(["onnx", "torchscript", "caffemodel"], case_sensitive=False),
              help="Output format.")
@click.option("-o", "-output", "--output", "output_path", required=True, metavar="OUT",
              help="File to write.")
@click.option("-input-shape", "--input-shape", "input_shapes", multiple=True,
              metavar="NAME=D0,D1,...", help="Shape of an input whose size the prototxt "
              "does not give (repeatable), e.g. data=1,3,224,224.")
@click.option("-outputs", "--outputs", default=None,
              help="Comma-separated blobs to export (default: the net's outputs).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version.")
@click.option("-stage", "--stage", multiple=True, help="NetState stage (repeatable).")
@click.option("--allow-python-layers", is_flag=True,
              help="Build Python layers that name a hovcaffe CaffeLayer replacement.")
def cli(net_path: str, weights: str | None, fmt: str, output_path: str,
        input_shapes: tuple[str, ...], outputs: str | None, opset: int,
        stage: tuple[str, ...], allow_python_layers: bool) -> None:
    """Export the TEST view of a net (dynamic batch dimension)."""
    from hovcaffe.caffe.io import read_net
    from hovcaffe.caffe.state import net_state
    from hovcaffe.commands.inspect import parse_input_shape
    from hovcaffe.export import export_net
    from hovcaffe.net import CaffeNet
    from hovcaffe.weights import load_weights

    shapes = dict(parse_input_shape(s) for s in input_shapes)
    net = CaffeNet(read_net(net_path), "TEST", state=net_state("TEST", 0, stage),
                   input_shapes=shapes, source=net_path, allow_python_layers=allow_python_layers)
    if weights:
        click.echo(f"weights: {load_weights(net, weights).summary()}", err=True)
    else:
        click.echo("warning: no --weights given; exporting the fillers' initial values",
                   err=True)
    wanted = [o.strip() for o in outputs.split(",") if o.strip()] if outputs else None
    try:
        export_net(net.eval(), fmt, output_path, outputs=wanted, opset=opset)
    except OSError as exc:
        raise UserInputError(f"cannot write {output_path!r}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {fmt} to {output_path} (inputs: {', '.join(net.input_names)}; "
               f"outputs: {', '.join(wanted or net.output_names)})", err=True)
