"""Sharding and shuffling plans: disjoint, covering, deterministic, resumable."""
from __future__ import annotations

import pytest

from hovcaffe.data.order import TEST, TRAIN, ShardPlan

SIZES = [7, 5, 9, 3, 6, 8, 4]
N = sum(SIZES)


def stream(plan: ShardPlan, n: int, start: int = 0) -> list[int]:
    rows, positions = [], []
    for w in plan.windows(start):
        got = plan.global_rows(w).tolist()
        rows += got
        positions += list(range(w.start, w.start + len(got)))
        if len(rows) >= n:
            break
    assert positions[:n] == list(range(start, start + n))  # windows report exact positions
    return rows[:n]


def plans(world_size, **kw):
    return [ShardPlan(SIZES, rank=r, world_size=world_size, phase=TRAIN, **kw) for r in range(world_size)]


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_train_rows_shards_are_disjoint_and_cover_each_epoch(world_size, shuffle):
    ps = plans(world_size, shuffle=shuffle, seed=11, window_groups=2)
    streams = [stream(p, 3 * N) for p in ps]
    shared = [streams[pos % world_size][pos // world_size] for pos in range(3 * N)]
    for epoch in range(3):
        per_rank = [set(shared[epoch * N:(epoch + 1) * N][r::world_size]) for r in range(world_size)]
        assert sum(len(s) for s in per_rank) == N                    # disjoint
        assert set().union(*per_rank) == set(range(N))                # covering
    if not shuffle:
        assert shared[:N] == list(range(N))   # Caffe's order: record i to rank i mod world_size
    else:
        assert shared[:N] != list(range(N)) and shared[:N] != shared[N:2 * N]  # reshuffled per epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_train_row_group_shards_are_disjoint_and_cover_each_epoch(world_size):
    ps = plans(world_size, shuffle=True, seed=3, shard="row_groups", window_groups=2)
    for epoch in range(2):
        shares = [stream(p, (epoch + 1) * p.epoch_rows)[epoch * p.epoch_rows:] for p in ps]
        assert sorted(sum(shares, [])) == list(range(N))
    for r, p in enumerate(ps):   # each rank only touches its own row groups
        own = {g for g in range(len(SIZES)) if g % world_size == r}
        assert {g for w, _ in zip(p.windows(), range(20)) for g in w.groups} <= own


def test_many_ranks_equal_one_rank_with_bigger_batch():
    # The union of rank batches k (batch b) equals batch k of one rank with batch 2b: same gradients.
    b = 5
    one = stream(ShardPlan(SIZES, rank=0, world_size=1, phase=TRAIN, shuffle=True, seed=4), 8 * b)
    two = [stream(p, 4 * b) for p in plans(2, shuffle=True, seed=4)]
    for k in range(4):
        assert sorted(two[0][k * b:(k + 1) * b] + two[1][k * b:(k + 1) * b]) == sorted(one[2 * k * b:2 * (k + 1) * b])


@pytest.mark.parametrize("shard", ["rows", "row_groups"])
def test_resume_from_any_position(shard):
    for p in plans(3, shuffle=True, seed=9, shard=shard):
        full = stream(p, 60)
        for start in (1, 17, 33):
            assert stream(p, 20, start) == full[start:start + 20]


def test_seed_decides_the_order():
    a = stream(ShardPlan(SIZES, rank=0, world_size=1, phase=TRAIN, shuffle=True, seed=1), N)
    b = stream(ShardPlan(SIZES, rank=0, world_size=1, phase=TRAIN, shuffle=True, seed=1), N)
    c = stream(ShardPlan(SIZES, rank=0, world_size=1, phase=TRAIN, shuffle=True, seed=2), N)
    assert a == b and a != c and sorted(a) == list(range(N))


@pytest.mark.parametrize("world_size", [1, 2, 3, 50])
def test_test_phase_evaluates_each_sample_once(world_size):
    rows = []
    for r in range(world_size):
        p = ShardPlan(SIZES, rank=r, world_size=world_size, phase=TEST, shuffle=True)
        got = [x for w in p.windows() for x in p.global_rows(w).tolist()]
        assert len(got) == p.samples_per_pass
        rows += got
    assert rows == list(range(N))  # file order, contiguous blocks per rank


def test_row_groups_fall_back_to_rows_when_too_few():
    p = ShardPlan([5, 5], rank=2, world_size=3, phase=TRAIN, shard="row_groups")
    assert p.shard == "rows"


def test_bad_rank():
    with pytest.raises(ValueError, match="rank 3 is outside world_size 3"):
        ShardPlan(SIZES, rank=3, world_size=3, phase=TRAIN)
