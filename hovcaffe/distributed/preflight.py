"""Checks on the driver before any rank starts, so mistakes cost seconds, not a cluster launch.

Cluster checks (the transport exists, N tasks fit) live in :mod:`launcher`; these are about the
run itself: the nets are valid and build, every data source is readable from the driver, and the
model output folder is writable.
"""
from __future__ import annotations

import logging
from typing import Iterator

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.data_layer_types import source_of
from hovcaffe.data import storage
from hovcaffe.distributed import outputs
from hovcaffe.distributed.run_plan import RunPlan
from hovcaffe.errors import DataSourceError

log = logging.getLogger(__name__)



def _net_specs(plan: RunPlan):
    from hovcaffe.training.nets import test_net_specs, train_net_spec

    sp = plan.config.solver
    if plan.config.max_iter is not None:
        sp = caffe_pb2.SolverParameter()
        sp.CopyFrom(plan.config.solver)
        sp.max_iter = int(plan.config.max_iter)
    return [train_net_spec(sp, plan.config.solver_path)] + test_net_specs(sp, plan.config.solver_path)


def data_sources(spec, override: str | None) -> Iterator[tuple[str, str]]:
    """(layer name, source URL) of the data layers in a net spec's phase view."""
    from hovcaffe.caffe.state import filter_net

    view = filter_net(spec.param, spec.state, spec.source)
    for layer in view.layer:
        source = source_of(layer)
        if source:
            yield layer.name, override or source


def check_plan(plan: RunPlan, world_size: int, *, build_nets: bool = True) -> list[str]:
    """Run the checks of the run plan; returns one line per check passed.

    Raises:
        NetDefinitionError / UnsupportedLayerError: a net is invalid.
        DataSourceError: a data source cannot be read from the driver.
        UserInputError: the model output folder is not writable.
    """
    from hovcaffe.caffe.check import check_net
    from hovcaffe.layers.registry import check_layer_type

    done: list[str] = []
    specs = _net_specs(plan)
    for spec in specs:
        check_net(spec.param, spec.source, state=spec.state, check_type=check_layer_type)
    done.append(f"{len(specs)} net(s) valid")

    seen = set()
    for i, spec in enumerate(specs):
        override = plan.config.train_data if i == 0 else plan.config.test_data
        for layer, url in data_sources(spec, override):
            if url in seen:
                continue
            seen.add(url)
            loc = storage.resolve(url, spec.base_dir)
            if not loc.exists():
                raise DataSourceError(f"data layer {layer!r}: source {url!r} is not readable from the "
                                      f"driver (looked for {loc.path}); ranks would fail on it")
    done.append(f"{len(seen)} data source(s) readable")

    folder = outputs.url_dirname(plan.prefix)
    outputs.check_writable(folder)
    done.append(f"model output {folder} writable")

    if build_nets:
        done.append(_build_nets(plan, specs, world_size))
    return done


def _build_nets(plan: RunPlan, specs, world_size: int) -> str:
    """Build each net as rank 0 will (data shapes from the real feeds), then drop it."""
    from hovcaffe.data.registry import FeedContext
    from hovcaffe.net import CaffeNet
    from hovcaffe.training.feeder import NetFeeder

    params = 0
    for i, spec in enumerate(specs):
        override = plan.config.train_data if i == 0 else plan.config.test_data
        ctx = FeedContext(phase=spec.phase, rank=0, world_size=world_size, seed=0, base_dir=spec.base_dir)
        feeder = NetFeeder.for_spec(spec, ctx, source_override=override, input_data=plan.config.input_data)
        try:
            net = CaffeNet(spec.param, spec.phase, state=spec.state, input_shapes=feeder.input_shapes(),
                           source=spec.source)
        finally:
            _close(feeder)
        if i == 0:
            params = sum(item.param.numel() for item in net.learnable_params())
        del net
    return f"nets build ({params:,} learnable values)"


def _close(feeder) -> None:
    for feed in getattr(feeder, "feeds", {}).values():
        close = getattr(feed, "close", None)
        if callable(close):
            close()
