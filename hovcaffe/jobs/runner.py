"""`hovcaffe job run`: one safe run of a job for one date.

Order of business: take the job's lock (exit 3 if a live run holds it) -> open the run's log ->
for each step: skip it when an earlier attempt at this date finished it (same spec, outputs
still there), else run its command as a child process, its outputs going to hidden staging
places -> when every step succeeded, publish the staged outputs (rename into place) -> write the
summary JSON -> release the lock. A failing step stops the job with exit 1 and publishes nothing.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from hovcaffe.errors import HovcaffeError, JobSpecError
from hovcaffe.jobs.location import StepPlace, publish
from hovcaffe.jobs.lock import JobLock
from hovcaffe.jobs.process import run_command
from hovcaffe.jobs.spec import JobSpec, StepSpec
from hovcaffe.jobs.state import JobState, now_iso
from hovcaffe.jobs.steps import StepContext
from hovcaffe.jobs.template import TemplateError, nested_lookup, render
from hovcaffe.utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

EXIT_OK, EXIT_STEP_FAILED, EXIT_SPEC, EXIT_LOCKED = 0, 1, 2, 3
#: Staged outputs of a run key that failed are kept this long after its last attempt, so that
#: rerunning that date reuses them; after that the next run of the job deletes them.
STALE_STAGING_S = 48 * 3600


def run_dir(spec: JobSpec, run_key: str) -> Path:
    """Folder of one run key: logs/, work/<step>/, summary.json."""
    return spec.state_dir / "runs" / run_key


class RunLog:
    """The per-run log file; runner messages also go to `logging`, step output to `echo`."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._echo = echo

    def _write(self, text: str) -> None:
        with self._lock:
            self._fh.write(f"{_dt.datetime.now():%Y-%m-%d %H:%M:%S} {text}\n")

    def _log(self, level: int, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        self._write(f"{logging.getLevelName(level)[0]} {text}")
        log.log(level, text)

    def info(self, msg: str, *args: Any) -> None:
        self._log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._log(logging.ERROR, msg, *args)

    def line(self, step: str, text: str) -> None:
        self._write(f"[{step}] {text}")
        if self._echo is not None:
            self._echo(f"[{step}] {text}")

    def close(self) -> None:
        self._fh.close()


@dataclass
class StepOutcome:
    name: str
    type: str
    outcome: str  # succeeded | skipped | failed | interrupted | not_run
    duration_s: float = 0.0
    exit_code: int | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM / SIGINT / SIGHUP set `stop` (the current step is ended cleanly) instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class JobRunner:
    """One `job run` invocation. Use `run_job(...)` rather than this class directly."""

    def __init__(self, spec: JobSpec, date: _dt.date, *, force_steps: tuple[str, ...] = (),
                 echo: Callable[[str], None] | None = None):
        self.spec = spec
        self.date = date
        self.run_key = date.isoformat()
        self.started = time.time()
        self.run_id = f"{_dt.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}"
        self.force_from = min((spec.step(n).index for n in force_steps), default=None)
        self.echo = echo
        self.stop = threading.Event()
        self.outcomes: list[StepOutcome] = []
        self.spec_error = False
        self.ran_any = False  # a step ran in this attempt: later ones must not be skipped

    # ------------------------------------------------------------------ templating
    def _context(self, step: StepSpec | None = None, staged: dict[str, StepPlace] | None = None,
                 inputs: dict[str, StepPlace] | None = None) -> dict[str, Any]:
        ctx: dict[str, Any] = {"date": self.date, "run_key": self.run_key, "run_id": self.run_id,
                               "job": self.spec.name, "spec_dir": str(self.spec.spec_dir),
                               "state_dir": str(self.spec.state_dir)}
        ctx["vars"] = {k: self._render_plain(v, ctx) for k, v in self.spec.vars.items()}
        if step is not None:
            ctx["work_dir"] = str(self._work_dir(step))
            ctx["inputs"] = {k: loc.arg for k, loc in (inputs or {}).items()}
            ctx["outputs"] = {k: loc.arg for k, loc in (staged or {}).items()}
            ctx["steps"] = {}
            for earlier in self.spec.steps[:step.index]:
                record = self.state.step(self.run_key, earlier.name).get("outputs") or {}
                ctx["steps"][earlier.name] = {"outputs": {
                    k: (o["url_arg"] if o.get("published") else o["staged"]) for k, o in record.items()}}
        return ctx

    def _render_plain(self, text: str, ctx: dict[str, Any]) -> str:
        base = nested_lookup(ctx)

        def lookup(name: str) -> Any:
            if name.startswith("env."):  # the runner's environment (the spec's env: is for steps)
                if name[4:] not in os.environ:
                    raise TemplateError(f"environment variable {name[4:]} is not set", name)
                return os.environ[name[4:]]
            return base(name)

        return render(text, lookup)

    def _renderer(self, step: StepSpec, ctx: dict[str, Any]) -> Callable[[str], str]:
        def do(text: str) -> str:
            try:
                return self._render_plain(text, ctx)
            except TemplateError as exc:
                raise JobSpecError(f"{self.spec.path}: step {step.name}: {text!r}: {exc}") from None
        return do

    def _work_dir(self, step: StepSpec) -> Path:
        return run_dir(self.spec, self.run_key) / "work" / step.name

    def _location(self, url: str, render_fn: Callable[[str], str]) -> StepPlace:
        return StepPlace.parse(render_fn(url), self.spec.spec_dir)

    def _environment(self, step: StepSpec, render_fn: Callable[[str], str]) -> dict[str, str]:
        env = dict(os.environ)
        # Tools next to this interpreter (spark-submit, horovodrun) must be found under cron's PATH.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                   if p and p != bin_dir])
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update({"HOVCAFFE_JOB": self.spec.name, "HOVCAFFE_RUN_KEY": self.run_key,
                    "HOVCAFFE_RUN_ID": self.run_id})
        env.update({k: render_fn(v) for k, v in self.spec.env.items()})
        env.update({k: render_fn(v) for k, v in step.env.items()})
        return env

    # ------------------------------------------------------------------ steps
    def _outputs_available(self, record: dict[str, Any]) -> str:
        """'' if every output of a finished step is still staged or published, else what is missing."""
        for key, out in (record.get("outputs") or {}).items():
            if out.get("published"):
                if not StepPlace.parse(out["url"], self.spec.spec_dir).complete():
                    return f"published output {key} ({out['url']}) is gone"
            elif not StepPlace.parse(out["staged"], self.spec.spec_dir).exists():
                return f"staged output {key} ({out['staged']}) is gone"
        return ""

    def _should_skip(self, step: StepSpec, record: dict[str, Any]) -> bool:
        if self.force_from is not None and step.index >= self.force_from:
            if record.get("status") != "new":
                self.runlog.info("step %s: forced to run again (--force-step)", step.name)
            return False
        if record.get("status") != "succeeded":
            return False
        if self.ran_any:
            self.runlog.info("step %s: an earlier step ran again, so this one does too", step.name)
            return False
        if record.get("fingerprint") != step.fingerprint:
            self.runlog.info("step %s: its spec changed since it finished; running it again", step.name)
            return False
        missing = self._outputs_available(record)
        if missing:
            self.runlog.warning("step %s: %s; running it again", step.name, missing)
            return False
        return True

    def _run_step(self, step: StepSpec) -> StepOutcome:
        record = self.state.step(self.run_key, step.name)
        # Resuming (snapshots in the work folder) is only right when this step was cut short with
        # the same spec and the same inputs; a step that runs again for any other reason (it had
        # finished, its spec changed, an earlier step ran again) starts from a clean folder.
        fresh = (record.get("status") == "succeeded" or self.ran_any
                 or record.get("fingerprint") not in (None, step.fingerprint))
        if fresh:
            shutil.rmtree(self._work_dir(step), ignore_errors=True)
        self.ran_any = True
        work_dir = self._work_dir(step)
        work_dir.mkdir(parents=True, exist_ok=True)
        record.update(status="running", fingerprint=step.fingerprint, started=now_iso(),
                      attempts=int(record.get("attempts", 0)) + 1, outputs={}, message="", exit_code=None)
        self.state.save()
        t0 = time.monotonic()
        outcome = StepOutcome(step.name, step.type, "failed")
        try:
            outcome = self._execute(step, record, work_dir, outcome)
        except JobSpecError as exc:  # a placeholder that cannot be filled at run time
            outcome.message, self.spec_error = str(exc), True
        except HovcaffeError as exc:
            outcome.message = str(exc)
        except OSError as exc:
            outcome.message = f"{type(exc).__name__}: {exc}"
        outcome.duration_s = round(time.monotonic() - t0, 3)
        record.update(status=outcome.outcome, finished=now_iso(), duration_s=outcome.duration_s,
                      exit_code=outcome.exit_code, message=outcome.message, metrics=outcome.metrics)
        if outcome.outcome != "succeeded":
            record["outputs"] = {}
            self.runlog.error("step %s %s: %s", step.name, outcome.outcome, outcome.message)
        else:
            self.runlog.info("step %s succeeded in %.1f s", step.name, outcome.duration_s)
        self.state.save()
        return outcome

    def _execute(self, step: StepSpec, record: dict[str, Any], work_dir: Path,
                 outcome: StepOutcome) -> StepOutcome:
        plain = self._renderer(step, self._context())
        inputs = {k: self._location(u, plain) for k, u in step.inputs.items()}
        for key, loc in inputs.items():
            if not loc.exists():
                outcome.message = f"input {key} not found: {loc.url}"
                return outcome
        dests = {k: self._location(u, plain) for k, u in step.outputs.items()}
        staged = {k: d.staged(self.run_key) for k, d in dests.items()}
        for loc in staged.values():
            loc.remove()  # leftovers of a failed attempt (tools that refuse existing outputs)
            loc.make_parent()
        ctx_values = self._context(step, staged, inputs)
        render_fn = self._renderer(step, ctx_values)
        cwd = StepPlace.parse(render_fn(step.cwd), self.spec.spec_dir).path if step.cwd else None
        ctx = StepContext(step.name, step.options, render_fn,
                          lambda text: StepPlace.parse(render_fn(text), self.spec.spec_dir).arg,
                          cwd or self.spec.workdir, work_dir, int(record["attempts"]), staged,
                          log=self.runlog)  # type: ignore[arg-type]
        plan = step.kind.plan(ctx)
        if plan is not None:
            self.runlog.info("step %s (attempt %d): %s%s", step.name, ctx.attempt,
                             " ".join(plan.argv), f" [{plan.note}]" if plan.note else "")
            lines = ctx.output_lines

            def on_line(text: str) -> None:
                lines.append(text)
                self.runlog.line(step.name, text)

            env = self._environment(step, render_fn)
            env.update(plan.env)
            result = run_command(plan.argv, cwd=plan.cwd, env=env, on_line=on_line,
                                 on_start=lambda pid: self.lock.set_child(pid, step.name),
                                 timeout=step.timeout, stop=self.stop)
            self.lock.set_child(None)
            outcome.exit_code = result.returncode
            if result.reason or result.returncode != 0:
                outcome.outcome = "interrupted" if result.reason == "interrupted" else "failed"
                outcome.message = _describe_exit(result.returncode, result.reason, step.timeout, lines)
                return outcome
        outcome.metrics = step.kind.collect(ctx) or {}
        for key, loc in staged.items():
            if not loc.exists():
                outcome.message = (f"the command succeeded but did not write output {key} "
                                   f"(expected at {loc.arg})")
                return outcome
        record["outputs"] = {k: {"url": dests[k].url, "url_arg": dests[k].arg, "staged": staged[k].arg,
                                 "published": False} for k in staged}
        outcome.outcome = "succeeded"
        return outcome

    # ------------------------------------------------------------------ publishing and summary
    def _discard_stale_staging(self) -> None:
        """Delete the staged, never published outputs of other run keys whose last attempt ended
        more than STALE_STAGING_S ago (a failed date nobody reran). The state file names every
        staged place, so nothing is guessed from file names; the job's lock keeps those runs from
        running meanwhile. A later rerun of such a date finds its staging gone and runs the steps."""
        cutoff = time.time() - STALE_STAGING_S
        for key, run in self.state.data["runs"].items():
            ended = [a["finished"] for a in run.get("attempts", []) if a.get("finished")]
            if key == self.run_key or not ended or \
                    max(_dt.datetime.fromisoformat(t).timestamp() for t in ended) > cutoff:
                continue
            for step_name, record in run.get("steps", {}).items():
                for out_key, out in (record.get("outputs") or {}).items():
                    staged = StepPlace.parse(out["staged"], self.spec.spec_dir)
                    if out.get("published") or not staged.exists():
                        continue
                    try:
                        staged.remove()
                    except OSError as exc:
                        self.runlog.warning("cannot delete stale staging %s: %s", staged.arg, exc)
                        continue
                    self.runlog.info("deleted stale staging %s (run %s, step %s, output %s, never "
                                     "published)", staged.arg, key, step_name, out_key)

    def _publish_all(self) -> str:
        for step in self.spec.steps:
            record = self.state.step(self.run_key, step.name)
            for key, out in (record.get("outputs") or {}).items():
                if out.get("published"):
                    continue
                dest = StepPlace.parse(out["url"], self.spec.spec_dir)
                staged = StepPlace.parse(out["staged"], self.spec.spec_dir)
                try:
                    publish(staged, dest)
                except OSError as exc:
                    return f"publishing {step.name}.{key} to {out['url']} failed: {exc}"
                out["published"] = True
                self.state.save()
                self.runlog.info("published %s.%s -> %s", step.name, key, dest.arg)
        return ""

    def _summary(self, status: str, exit_code: int, message: str) -> dict[str, Any]:
        steps = []
        by_name = {o.name: o for o in self.outcomes}
        for step in self.spec.steps:
            o = by_name.get(step.name, StepOutcome(step.name, step.type, "not_run"))
            record = self.state.run(self.run_key)["steps"].get(step.name, {})
            steps.append({"name": step.name, "type": step.type, "outcome": o.outcome,
                          "duration_s": o.duration_s if o.outcome != "skipped" else record.get("duration_s"),
                          "exit_code": o.exit_code, "message": o.message, "attempts": record.get("attempts", 0),
                          "metrics": o.metrics or record.get("metrics") or {},
                          "outputs": {k: v["url_arg"] for k, v in (record.get("outputs") or {}).items()
                                      if v.get("published")}})
        return {"job": self.spec.name, "spec": str(self.spec.path), "run_key": self.run_key,
                "run_id": self.run_id, "status": status, "exit_code": exit_code, "message": message,
                "host": socket.gethostname(), "pid": os.getpid(),
                "started": _dt.datetime.fromtimestamp(self.started).astimezone().isoformat(timespec="seconds"),
                "finished": now_iso(), "duration_s": round(time.time() - self.started, 3),
                "log": str(self.runlog.path), "steps": steps}

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        """Run the job; returns the exit code (0, 1, or 2 for a placeholder that cannot be filled)."""
        info = {"job": self.spec.name, "run_id": self.run_id, "run_key": self.run_key,
                "spec": str(self.spec.path)}
        self.lock = JobLock(self.spec.state_dir, stale_after=self.spec.stale_after, info=info)
        self.lock.acquire()  # JobLockedError -> exit 3
        try:
            return self._run_locked()
        finally:
            self.lock.release()

    def _run_locked(self) -> int:
        rdir = run_dir(self.spec, self.run_key)
        self.runlog = RunLog(rdir / "logs" / f"{self.run_id}.log", self.echo)
        self.state = JobState(self.spec.state_dir, self.spec.name)
        run = self.state.run(self.run_key)
        for attempt in run["attempts"]:
            if attempt.get("status") == "running":  # its runner died without a word
                attempt["status"] = "crashed"
        for record in run["steps"].values():
            if record.get("status") == "running":
                record["status"] = "crashed"
        attempt = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                   "started": now_iso(), "status": "running", "log": str(self.runlog.path)}
        run["attempts"].append(attempt)
        run["status"] = "running"
        self.state.save()
        self.runlog.info("job %s, run %s (run id %s, attempt %d), spec %s", self.spec.name, self.run_key,
                         self.run_id, len(run["attempts"]), self.spec.path)
        self._discard_stale_staging()
        status, exit_code, message = "succeeded", EXIT_OK, ""
        try:
            with _stop_on_signals(self.stop):
                for step in self.spec.steps:
                    record = self.state.step(self.run_key, step.name)
                    if self._should_skip(step, record):
                        self.runlog.info("step %s: already finished for %s; skipped", step.name, self.run_key)
                        self.outcomes.append(StepOutcome(step.name, step.type, "skipped"))
                        continue
                    outcome = self._run_step(step)
                    self.outcomes.append(outcome)
                    if outcome.outcome != "succeeded":
                        status = "interrupted" if outcome.outcome == "interrupted" else "failed"
                        exit_code = EXIT_SPEC if self.spec_error else EXIT_STEP_FAILED
                        message = f"step {step.name}: {outcome.message}"
                        break
                    if self.stop.is_set():
                        status, exit_code, message = "interrupted", EXIT_STEP_FAILED, "stopped by a signal"
                        break
                if exit_code == EXIT_OK:
                    problem = self._publish_all()
                    if problem:
                        status, exit_code, message = "failed", EXIT_STEP_FAILED, problem
                        self.runlog.error("%s", problem)
        finally:
            summary = self._summary(status, exit_code, message)
            atomic_write_text(rdir / "summary.json", json.dumps(summary, indent=1) + "\n")
            attempt.update(status=status, exit_code=exit_code, finished=now_iso())
            run.update(status=status, exit_code=exit_code)
            self.state.save()
            self.runlog.info("job %s, run %s: %s (exit %d) in %.1f s; summary %s", self.spec.name,
                             self.run_key, status, exit_code, summary["duration_s"], rdir / "summary.json")
            self.runlog.close()
        return exit_code


def _describe_exit(code: int | None, reason: str, timeout: float | None, lines: Iterable[str]) -> str:
    if reason == "timeout":
        text = f"stopped after the step's timeout of {timeout:g} s"
    elif reason == "interrupted":
        text = "stopped because the job was asked to stop (signal)"
    elif reason:
        text = reason
    elif code is not None and code < 0:
        text = f"killed by signal {signal.Signals(-code).name}"
    else:
        text = f"exited with code {code}"
    tail = [line for line in list(lines)[-3:] if line.strip()]
    return text + (f"; last output: {' | '.join(tail)}" if tail else "")


def run_job(spec: JobSpec, date: _dt.date | None = None, *, force_steps: tuple[str, ...] = (),
            echo: Callable[[str], None] | None = None) -> int:
    """Run `spec` for `date` (default: today).

    Args:
        spec: a loaded job spec.
        date: the run's date; it is the run key and fills `{date}`.
        force_steps: run these steps (and all later ones) again even if they finished.
        echo: receives each line of step output (the CLI prints them).

    Returns:
        0 when every step succeeded and the outputs were published, 1 when a step failed
        (nothing published), 2 when a placeholder could not be filled at run time (an unset
        `{env.NAME}`).

    Raises:
        JobLockedError: another live run holds the lock (exit 3).
        JobSpecError: `force_steps` names no step (exit 2).
    """
    return JobRunner(spec, date or _dt.date.today(), force_steps=force_steps, echo=echo).run()
