"""The training job as the driver prepares it and the ranks receive it.

:func:`plan_run` turns `hovcaffe train`'s settings (a `hovcaffe.training.loop.TrainConfig`) into
a :class:`RunPlan` that means the same thing on every rank, wherever it runs:

* the solver with its nets inlined and file references made absolute (:mod:`portable`);
* the snapshot prefix made absolute; with `-model URL` (CaffeOnSpark), snapshots go to the
  folder of the model (`<model folder>/<prefix file name>_iter_N...`) and the final weights to the
  URL itself - for a remote URL rank 0 stages files locally and copies them (:mod:`outputs`);
* `-resume`: the last complete snapshot of that prefix (:mod:`resume`);
* metrics CSV / TensorBoard paths next to the snapshots unless given.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from hovcaffe.distributed import outputs
from hovcaffe.distributed.portable import absolute_if_present, absolute_path, portable_solver
from hovcaffe.distributed.resume import latest_snapshot
from hovcaffe.training.checkpoints import default_prefix
from hovcaffe.training.loop import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunPlan:
    """What every rank receives.

    Attributes:
        config: the portable TrainConfig (absolute paths, inlined nets).
        prefix: the snapshot prefix: a local path written in place, or a URL that rank 0 mirrors.
        model_url: where the final .caffemodel goes (None: snapshots only).
        metrics_csv: the metrics CSV (None: none).
        tensorboard_dir: TensorBoard events folder (None: none).
        cwd: the driver's working directory; ranks work there when it exists on their machine,
            so paths named inside list files mean the same as in a local run.
        event_interval_s: minimum seconds between progress events.
        resumed_from: the snapshot `-resume` picked (None: fresh start or an explicit -snapshot).
    """

    config: TrainConfig
    prefix: str
    model_url: str | None = None
    metrics_csv: str | None = None
    tensorboard_dir: str | None = None
    cwd: str = "."
    event_interval_s: float = 0.5
    resumed_from: str | None = None

    # Protobuf messages do not pickle; the solver travels as its wire bytes.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["config"] = dataclasses.replace(self.config, solver=None)
        state["_solver"] = self.config.solver.SerializeToString()
        return state

    def __setstate__(self, state: dict) -> None:
        from hovcaffe.caffe import caffe_pb2

        state = dict(state)
        solver = caffe_pb2.SolverParameter.FromString(state.pop("_solver"))
        state["config"] = dataclasses.replace(state["config"], solver=solver)
        self.__dict__.update(state)

    @property
    def remote(self) -> bool:
        """True when snapshots live behind a non-local URL (rank 0 stages and mirrors)."""
        return not outputs.is_local(self.prefix)

    @property
    def mirror_dir(self) -> str | None:
        return outputs.url_dirname(self.prefix) if self.remote else None


def _weights_list(items) -> tuple[str, ...]:
    return tuple(absolute_path(w.strip()) for item in items for w in str(item).split(",") if w.strip())


def plan_run(config: TrainConfig, *, model: str | None = None, resume_latest: bool = False,
             metrics_csv: str | None = None, tensorboard_dir: str | None = None,
             tensorboard: bool = True) -> RunPlan:
    """Resolve `config` on the driver into a :class:`RunPlan` (see the module docstring).

    Args:
        config: the local-run settings.
        model: CaffeOnSpark's `-model`: the final model URL; snapshots go to its folder.
        resume_latest: continue from the newest complete snapshot of the prefix (fresh start when
            there is none).
        metrics_csv / tensorboard_dir: explicit outputs; default next to the snapshots.
        tensorboard: write TensorBoard events at all.
    """
    solver_path = absolute_path(config.solver_path) if config.solver_path else None
    sp = portable_solver(config.solver, solver_path)
    prefix = default_prefix(solver_path, config.snapshot_prefix or sp.snapshot_prefix)
    if model:
        prefix = outputs.join(outputs.url_dirname(model), os.path.basename(prefix))
    if outputs.is_local(prefix):
        prefix = outputs.local_path(prefix)
    model_url = outputs.local_path(model) if model and outputs.is_local(model) else model

    resume = absolute_path(config.resume) if config.resume else None
    resumed_from = None
    if resume_latest and not resume:
        found = latest_snapshot(prefix)
        if found is None:
            log.info("resume: no complete snapshot with prefix %s yet; starting from the beginning", prefix)
        else:
            resume = resumed_from = found[1]
            log.info("resume: continuing from %s (iteration %d)", found[1], found[0])

    local_outputs = outputs.is_local(prefix)
    if metrics_csv is None:
        metrics_csv = f"{prefix}_metrics.csv" if local_outputs else None
    if tensorboard and tensorboard_dir is None and local_outputs:
        tensorboard_dir = f"{prefix}_tensorboard"
    portable = dataclasses.replace(
        config, solver=sp, solver_path=solver_path,
        weights=_weights_list(config.weights), resume=resume,
        snapshot_prefix=prefix,
        train_data=absolute_if_present(config.train_data, None) if config.train_data else None,
        test_data=absolute_if_present(config.test_data, None) if config.test_data else None,
        input_data=absolute_path(config.input_data) if config.input_data else None,
        handle_signals=False)
    return RunPlan(config=portable, prefix=prefix, model_url=model_url,
                    metrics_csv=absolute_path(metrics_csv) if metrics_csv else None,
                    tensorboard_dir=absolute_path(tensorboard_dir) if tensorboard and tensorboard_dir else None,
                    cwd=os.getcwd(), resumed_from=resumed_from)
