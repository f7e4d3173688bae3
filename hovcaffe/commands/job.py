"""`hovcaffe job run|status SPEC`: scheduled batch jobs that are safe to start from cron."""
from __future__ import annotations

import json

import click

EXIT_CODES_HELP = """\b
Exit codes:
  0  every step succeeded (or had already succeeded for this date); outputs published
  1  a step failed or was stopped; nothing of this run was published
  2  the job spec is invalid (the message names the file and key)
  3  another run of this job is still running (the message names it)
"""


@click.group(name="job", context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
def cli() -> None:
    """Run or inspect a scheduled batch job described by a YAML/TOML spec (see docs/jobs.md)."""


@cli.command(name="run", epilog=EXIT_CODES_HELP)
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--date", "run_date", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Date of the run (YYYY-MM-DD): the run key and {date}. Default: today.")
@click.option("--force-step", "force_steps", multiple=True, metavar="NAME",
              help="Run step NAME (and every later step) again even if it finished. Repeatable.")
@click.option("--show-output/--hide-output", default=True,
              help="Copy the steps' output to stdout (it always goes to the run's log file).")
def run_command(spec_path: str, run_date, force_steps: tuple[str, ...], show_output: bool) -> None:
    """Run the job in SPEC once for a date, safely.

    Takes the job's lock (a second start exits 3), skips steps an earlier attempt at the same
    date finished, resumes training from the newest snapshot, publishes outputs only when
    every step succeeded, and writes a log and a summary JSON under the job's state_dir.
    """
    from hovcaffe.jobs.runner import run_job
    from hovcaffe.jobs.spec import load_spec

    spec = load_spec(spec_path)
    echo = (lambda line: click.echo(line)) if show_output else None
    code = run_job(spec, run_date.date() if run_date else None, force_steps=force_steps, echo=echo)
    if code:
        click.get_current_context().exit(code)


@cli.command(name="status", epilog="Exit codes: 0 status shown, 2 the job spec is invalid.")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("-n", "--limit", default=10, show_default=True, help="How many recent runs to show.")
def status_command(spec_path: str, as_json: bool, limit: int) -> None:
    """Show the last runs of the job in SPEC, their outcome, and who holds its lock."""
    from hovcaffe.jobs.spec import load_spec
    from hovcaffe.jobs.status import job_status

    status = job_status(load_spec(spec_path), limit=limit)
    if as_json:
        click.echo(json.dumps(status, indent=1))
        return
    click.echo(f"job {status['job']}  (spec {status['spec']})")
    click.echo(f"state: {status['state_dir']}")
    lock = status["lock"]
    if lock is None:
        click.echo("lock: free")
    else:
        state = "held" if lock["live"] else "STALE (the next run takes it over)"
        click.echo(f"lock: {state} - {lock['description']}; {lock['why']}")
    if not status["runs"]:
        click.echo("no runs yet")
        return
    click.echo(f"{'run':<12} {'status':<12} {'exit':<5} {'tries':<6} {'started':<26} steps")
    for run in status["runs"]:
        steps = " ".join(f"{name}:{s['status']}" for name, s in run["steps"].items())
        exit_code = "" if run["exit_code"] is None else str(run["exit_code"])
        click.echo(f"{run['run_key']:<12} {run['status']:<12} {exit_code:<5} {run['attempts']:<6} "
                   f"{run['started'] or '':<26} {steps}")
    last = status["runs"][0]
    failed = [f"{n}: {s['message']}" for n, s in last["steps"].items() if s["message"]]
    for line in failed:
        click.echo(f"  {line}")
    if last.get("log"):
        click.echo(f"last log: {last['log']}")
