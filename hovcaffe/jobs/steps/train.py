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

from hovcaffe.errors import HovcaffeError
from hovcaffe.jobs import metrics as metrics_mod
from hovcaffe.jobs.schema import Field
from hovcaffe.jobs.steps.base import Plan, StepContext, StepType, hovcaffe_argv, register_step

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
    path = Path(name)
    if path.is_absolute():
        return name
    for base in (cwd, solver_dir):
        if (base / path).exists():
            return str((base / path).resolve())
    return str(solver_dir / path)  # let `hovcaffe train` report it, naming this path


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
        "num_proc": Field("int", minimum=1, doc="Horovod ranks (hovcaffe train -num-proc)"),
        "master": Field("str", doc="Spark master URL (hovcaffe train -master)"),
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
        if ctx.options.get("num_proc"):
            argv += ["-num-proc", str(ctx.options["num_proc"])]
        if ctx.options.get("master"):
            argv += ["-master", ctx.render(ctx.options["master"])]
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
        if options.get("master") and not options.get("num_proc"):
            raise error(("master",), "a Spark master only matters with num_proc (Horovod ranks on Spark)")
