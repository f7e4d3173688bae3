"""`type: train` - run `hovcaffe train` so that a crashed run resumes where it stopped.

The runner writes a copy of the user's solver into the step's work folder with four changes:
`snapshot_prefix` points into the step's snapshot folder (kept across attempts at one run key),
`snapshot_after_train: true` and binary snapshots (the final model is what gets published),
`max_iter` / `snapshot` from `iterations` / `snapshot_every` when given, and `net` paths made
absolute (found the way `hovcaffe train` finds them: current folder first, then the solver's
folder). Each attempt resumes from the newest *complete* snapshot: a `_iter_N.solverstate`
with its `_iter_N.caffemodel`; half-written files carry a `.tmp-` prefix and never match.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from hovcaffe.option_flags import FLAGS
from hovcaffe.errors import HovcaffeError
from hovcaffe.jobs import metrics as metrics_mod
from hovcaffe.jobs.schema import Field
from hovcaffe.jobs.steps.base import Plan, StepContext, StepType, hovcaffe_argv, register_step
from hovcaffe.options import SPECS
from hovcaffe.utils.paths import candidates

SOLVER_COPY = "solver.prototxt"
MERGED_METRICS = "metrics.csv"


def complete_snapshots(folder: Path, prefix_name: str) -> dict[int, Path]:
    """Iteration -> `.solverstate` path, for snapshots whose caffemodel is present too."""
    from hovcaffe.training.checkpoints import find_snapshots

    if not folder.is_dir():
        return {}
    found = find_snapshots([entry.name for entry in folder.iterdir()], prefix_name)
    return {it: folder / snap.state for it, snap in found if not snap.hdf5}


def _resolve_net_path(name: str, cwd: Path, solver_dir: Path) -> str:
    """`name` as `hovcaffe train` will find it when run in `cwd` (the one path rule,
    `hovcaffe.utils.paths`); a path found nowhere is kept in the solver's folder, for
    `hovcaffe train` to report."""
    if Path(name).is_absolute():
        return name
    found = next((cwd / c for c in candidates(name, solver_dir) if (cwd / c).exists()), None)
    return str(found.resolve()) if found is not None else str(solver_dir / name)


#: distributed-training options a train step passes on to `hovcaffe train` (-model and -resume
#: are the step's own business: it names the outputs and resumes by itself)
STEP_OPTIONS = ("num_proc", "backend", "master", "remote", "connection", "nics", "devices",
                "start_timeout", "threads_per_rank", "max_restarts")


def _option_field(name: str) -> Field:
    spec = SPECS[name]
    if spec.default is not None and isinstance(spec.default, int):
        return Field("int", minimum=min(1, spec.default), doc=spec.help)
    return Field("str", doc=spec.help)


@register_step
class TrainStep(StepType):
    type_name = "train"
    summary = "hovcaffe train on a solver; resumes from the newest snapshot after a crash"
    schema = {
        "solver": Field("str", required=True, doc="the solver prototxt"),
        "weights": Field("str", doc="caffemodel to fine-tune from (first attempt only)"),
        "iterations": Field("int", minimum=1, doc="overrides the solver's max_iter"),
        "snapshot_every": Field("int", minimum=1,
                                doc="overrides the solver's snapshot interval (what a resume can reuse)"),
        **{name: _option_field(name) for name in STEP_OPTIONS},
        "args": Field("str_list", default=[], doc="more arguments for hovcaffe train"),
    }
    output_keys = ("model", "solverstate", "metrics")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _snapshot_dir(ctx: StepContext) -> Path:
        # Inside the work folder: per run key (a new date never resumes yesterday's training)
        # and wiped by the runner whenever the step must start afresh.
        return ctx.work_dir / "snapshots"

    def _derive_solver(self, ctx: StepContext) -> tuple[Any, str]:
        from hovcaffe.caffe import caffe_pb2
        from hovcaffe.caffe.io import read_solver, write_prototxt

        solver_path = Path(ctx.resolve(ctx.options["solver"]))
        sp = read_solver(solver_path)
        prefix_name = Path(sp.snapshot_prefix).name if sp.snapshot_prefix else ""
        prefix_name = prefix_name or ctx.name
        snap_dir = self._snapshot_dir(ctx)
        snap_dir.mkdir(parents=True, exist_ok=True)
        sp.snapshot_prefix = str(snap_dir / prefix_name)
        sp.snapshot_after_train = True
        sp.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        if ctx.options.get("iterations"):
            sp.max_iter = int(ctx.options["iterations"])
        if ctx.options.get("snapshot_every"):
            sp.snapshot = int(ctx.options["snapshot_every"])
        elif sp.snapshot <= 0:
            ctx.log.warning("step %s: the solver takes no intermediate snapshots (snapshot: 0) and no "
                            "snapshot_every is set: a crashed run restarts training from the start",
                            ctx.name)
        solver_dir = solver_path.parent
        if sp.HasField("net"):
            sp.net = _resolve_net_path(sp.net, ctx.cwd, solver_dir)
        if sp.HasField("train_net"):
            sp.train_net = _resolve_net_path(sp.train_net, ctx.cwd, solver_dir)
        for i, name in enumerate(sp.test_net):
            sp.test_net[i] = _resolve_net_path(name, ctx.cwd, solver_dir)
        write_prototxt(sp, ctx.work_dir / SOLVER_COPY)
        return sp, prefix_name

    # ------------------------------------------------------------------ hooks
    def plan(self, ctx: StepContext) -> Plan | None:
        sp, prefix_name = self._derive_solver(ctx)
        snapshots = complete_snapshots(self._snapshot_dir(ctx), prefix_name)
        newest = max(snapshots, default=None)
        if newest is not None and newest >= sp.max_iter:
            ctx.log.info("step %s: snapshot at iteration %d already reaches max_iter %d; "
                         "nothing left to train", ctx.name, newest, sp.max_iter)
            return None
        argv = ["-solver", str(ctx.work_dir / SOLVER_COPY)]
        if newest is not None:
            argv += ["-snapshot", str(snapshots[newest])]
            note = f"resuming from iteration {newest} ({snapshots[newest].name})"
        elif ctx.options.get("weights"):
            argv += ["-weights", ctx.resolve(ctx.options["weights"])]
            note = "fine-tuning from " + argv[-1]
        else:
            note = "training from scratch"
        argv += ["--metrics-csv", str(ctx.work_dir / f"metrics-attempt{ctx.attempt:03d}.csv")]
        for name in STEP_OPTIONS:
            if ctx.options.get(name) is not None:
                argv += [FLAGS[name][0], ctx.render(str(ctx.options[name]))]
        argv += [ctx.render(a) for a in ctx.options.get("args") or []]
        return Plan(hovcaffe_argv("train", *argv), ctx.cwd, note=note)

    def collect(self, ctx: StepContext) -> dict[str, Any]:
        from hovcaffe.caffe.io import read_solver
        from hovcaffe.training.checkpoints import SnapshotFiles

        sp = read_solver(ctx.work_dir / SOLVER_COPY)
        snap_dir = Path(sp.snapshot_prefix).parent
        prefix_name = Path(sp.snapshot_prefix).name
        final = complete_snapshots(snap_dir, prefix_name).get(sp.max_iter)
        if final is None:
            raise HovcaffeError(
                f"step {ctx.name}: hovcaffe train exited cleanly but {snap_dir} holds no complete "
                f"snapshot at max_iter {sp.max_iter} "
                f"({SnapshotFiles.at(prefix_name, sp.max_iter).model} and .solverstate)")
        model = final.with_name(SnapshotFiles.of(final.name).model)
        rows = metrics_mod.merge_rows(sorted(ctx.work_dir.glob("metrics-attempt*.csv")))
        merged = ctx.work_dir / MERGED_METRICS
        from hovcaffe.utils.fileio import atomic_write_text
        atomic_write_text(merged, metrics_mod.to_csv(rows))
        sources = {"model": model, "solverstate": final, "metrics": merged}
        for key, staged in ctx.staged.items():
            staged.put_file(sources[key])
        return {"iterations": sp.max_iter, **metrics_mod.summarize(rows), "final_snapshot": str(model)}

    def check(self, options: Mapping[str, Any], outputs: Mapping[str, str], error) -> None:
        for where in ("master", "remote"):  # the CLI refuses these without -num-proc too
            if options.get(where) and not options.get("num_proc"):
                raise error((where,), f"a Spark {'master' if where == 'master' else 'Connect URL'} "
                                      f"only matters with num_proc (ranks on Spark)")
        for name in STEP_OPTIONS:
            value = options.get(name)
            if value is None or "{" in str(value):  # templated values are checked when run
                continue
            try:
                SPECS[name].convert(value)
            except ValueError as exc:
                raise error((name,), str(exc)) from None
