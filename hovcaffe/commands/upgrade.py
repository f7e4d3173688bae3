"""`hovcaffe upgrade IN [OUT]`: rewrite a legacy prototxt / caffemodel in the current format.

Like Caffe's `upgrade_net_proto_text`, `upgrade_net_proto_binary` and
`upgrade_solver_proto_text` in one command: the kind of file is recognised from its
content (binary NetParameter, text net, or text solver).
"""
from __future__ import annotations

from pathlib import Path

import click

from hovcaffe.errors import NetDefinitionError, PrototxtError, UserInputError


def _is_binary(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in data[:4096]


def upgrade_file(src: str, dst: str | None) -> tuple[str, list[str], str | None]:
    """Upgrade `src`; write to `dst` (text goes to the returned string when dst is None).

    Returns:
        (kind, steps applied, text when dst is None and the file is text).
    """
    from hovcaffe.caffe import io
    from hovcaffe.caffe.upgrade import upgrade_net, upgrade_solver

    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        raise UserInputError(f"{src}: cannot read: {exc.strerror or exc}") from None
    if _is_binary(data):
        if dst is None:
            raise UserInputError("a binary caffemodel needs an OUT file to write to")
        net = io.parse_caffemodel(data, src, upgrade=False)
        steps = upgrade_net(net, src)
        io.write_caffemodel(net, dst)
        return "caffemodel", steps, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrototxtError(f"not a UTF-8 text prototxt nor a binary caffemodel (byte {exc.start}: "
                            f"{exc.reason})", src) from None
    try:
        msg = io.parse_net(text, src, upgrade=False)
        steps, kind = upgrade_net(msg, src), "net"
    except PrototxtError as net_error:
        try:
            msg = io.parse_solver(text, src, upgrade=False)
        except PrototxtError:
            raise net_error from None
        steps, kind = upgrade_solver(msg, src), "solver"
    if kind == "net" and not msg.layer:  # an empty file parses as a net without layers
        raise NetDefinitionError(f"{src}: the net has no layers (is this a net prototxt?)")
    if dst is None:
        return kind, steps, io.to_prototxt(msg)
    io.write_prototxt(msg, dst)
    return kind, steps, None


@click.command("upgrade", help="Rewrite a V0/V1 prototxt or caffemodel in the current format.")
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="[OUT]", required=False, type=click.Path(dir_okay=False))
def cli(src: str, dst: str | None) -> None:
    kind, steps, text = upgrade_file(src, dst)
    if text is not None:
        click.echo(text, nl=False)
        return
    what = "; ".join(steps) if steps else "already current, rewritten unchanged"
    click.echo(f"{src} -> {dst} ({kind}: {what})", err=True)
