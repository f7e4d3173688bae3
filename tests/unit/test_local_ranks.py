"""``-devices K`` on the torch backend without Spark: how N ranks split into barrier tasks, and
which GPU each local rank binds. GPUs cannot run here: the GPU lists below stand for what
``TaskContext.resources()['gpu'].addresses`` returns on a GPU executor (the only mocked part)."""
from __future__ import annotations

import pytest

from hovcaffe.distributed.backends.barrier import stage_shape
from hovcaffe.distributed.local_ranks import gpu_for_local_rank
from hovcaffe.options import DistributedOptions, OptionError


@pytest.mark.parametrize("num_proc, devices, expected", [
    (2, 1, (2, 2, 1)),  # one rank per task
    (2, 2, (2, 1, 2)),  # one task, local ranks 0 and 1: global ranks 0, 1
    (6, 3, (6, 2, 3)),  # task 1 holds global ranks 3, 4, 5 (task index x K + local rank)
])
def test_num_proc_ranks_run_as_num_proc_over_devices_tasks(num_proc, devices, expected):
    assert stage_shape(DistributedOptions(num_proc=num_proc, devices=devices)) == expected


def test_num_proc_not_a_multiple_of_devices_is_a_usage_error():
    with pytest.raises(OptionError, match="num_proc 3 is not a multiple of .*devices 2"):
        stage_shape(DistributedOptions(num_proc=3, devices=2))


def test_local_rank_j_binds_the_tasks_jth_gpu_and_too_few_gpus_is_an_error():
    assert [gpu_for_local_rank(["4", "5"], j, 2) for j in (0, 1)] == ["4", "5"]
    assert gpu_for_local_rank([], 1, 2) is None  # CPU task: Gloo
    with pytest.raises(RuntimeError, match="holds 1 GPU.*gpu.amount=2"):
        gpu_for_local_rank(["0"], 0, 2)
