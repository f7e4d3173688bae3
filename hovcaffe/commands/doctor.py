"""`hovcaffe doctor`: is this machine ready to train?"""
from __future__ import annotations

import json
import sys

import click

from hovcaffe.option_flags import FLAGS


@click.command(name="doctor")
@click.option("--no-spark", is_flag=True,
              help="Only check versions; skip the allreduce smoke tests of the launchers.")
@click.option(*FLAGS["num_proc"], "num_proc", default=2, show_default=True,
              help="Ranks in the allreduce smoke tests.")
@click.option(*FLAGS["master"], "master", default=None,
              help="Spark master URL (default: active session or local[N]).")
@click.option(*FLAGS["nics"], "nics", default=None,
              help="Comma-separated network interfaces for Horovod (default: lo on a local master).")
@click.option("--transport", type=click.Choice(["gloo", "mpi", "both"]), default="both",
              show_default=True, help="Horovod's transports to smoke-test.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cli(no_spark: bool, num_proc: int, master: str | None, nics: str | None, transport: str,
        as_json: bool) -> None:
    """Print the versions hovcaffe depends on, check every launcher backend and run an allreduce
    through each (Horovod on Spark over Gloo and MPI; local torch.distributed processes).

    Exits 0 when everything works, 1 otherwise; every failed check says how to fix it.
    """
    from hovcaffe.doctor import SMOKE_TESTS, run_checks

    master = master or f"local[{num_proc}]"
    nic_names = tuple(n.strip() for n in nics.split(",") if n.strip()) if nics else None
    wanted = ("gloo", "mpi") if transport == "both" else (transport,)
    smoke = tuple((b, c) for b, c in SMOKE_TESTS if b != "horovod" or c in wanted)
    checks = run_checks(spark=not no_spark, num_proc=num_proc, master=master, nics=nic_names,
                        smoke_tests=smoke)
    failed = [c for c in checks if not c.ok]
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark} {c.name:<{width}}  {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"     {'':<{width}}  fix: {c.fix}")
        click.echo("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    sys.exit(1 if failed else 0)
