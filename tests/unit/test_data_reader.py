"""The batch reader: sharded TRAIN streams, exactly-once TEST passes, exact resume, transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import write_image_list, write_mnist

from hovcaffe.data.convert import convert_source, make_source
from hovcaffe.data.reader import make_batch_iterator
from hovcaffe.data.transform import TEST, TRAIN, Transformer, TransformSpec
from hovcaffe.data.writer import WriteOptions
from hovcaffe.errors import DataSourceError

N = 90


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """MNIST-like dataset whose label is the row index (to identify samples), many row groups."""
    folder = tmp_path_factory.mktemp("mnist")
    src, images, _ = write_mnist(folder / "src", n=N, rows=8, cols=6)
    (folder / "src" / "train-labels-idx1-ubyte").write_bytes(
        (2049).to_bytes(4, "big") + N.to_bytes(4, "big") + bytes(range(N)))
    convert_source(make_source("mnist", str(src)), str(folder / "ds"), records_per_file=40,
                   options=WriteOptions(row_group_bytes=600))
    return str(folder / "ds"), images


def ids(batch) -> list[int]:
    return batch["label"].to(torch.int64).tolist()


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shard", ["rows", "row_groups"])
def test_train_shards_disjoint_and_covering(mnist, world_size, shard):
    url, images = mnist
    b = 7
    per_rank = []
    for r in range(world_size):
        it = make_batch_iterator(url, rank=r, world_size=world_size, phase=TRAIN, batch_size=b, seed=5,
                                 shard=shard)
        epoch = it.num_samples
        seen = []
        while len(seen) < 2 * epoch:   # infinite: keeps yielding past the epoch
            batch = next(it)
            assert batch["data"].shape == (b, 1, 8, 6) and batch["data"].dtype == torch.float32
            np.testing.assert_array_equal(batch["data"].numpy(), images[ids(batch)][:, None])
            seen += ids(batch)
        it.close()
        if shard == "row_groups":
            assert sorted(seen[epoch:2 * epoch]) == sorted(seen[:epoch])
        per_rank.append(seen[:epoch])
    if shard == "rows" and N % world_size:
        return  # rank epochs then straddle the shared stream's epoch boundary; covered in test_data_order
    assert sorted(sum(per_rank, [])) == list(range(N))


def test_train_without_shuffle_reads_in_order_round_robin(mnist):
    url, _ = mnist
    it = make_batch_iterator(url, rank=1, world_size=2, phase=TRAIN, batch_size=10, shuffle=False)
    assert ids(next(it)) == list(range(1, 21, 2))


@pytest.mark.parametrize("world_size", [2, 3])
def test_test_pass_each_sample_once_with_short_last_batch(mnist, world_size):
    url, images = mnist
    b = 8
    seen = []
    for r in range(world_size):
        it = make_batch_iterator(url, rank=r, world_size=world_size, phase=TEST, batch_size=b)
        batches = list(it)
        sizes = [len(ids(x)) for x in batches]
        assert sum(sizes) == it.num_samples and len(batches) == len(it)
        assert all(s == b for s in sizes[:-1]) and 0 < sizes[-1] <= b   # short final batch, no padding
        rank_ids = sum((ids(x) for x in batches), [])
        assert [ids(x) for x in it] == [ids(x) for x in batches]       # the next loop is the next pass
        seen += rank_ids
    assert seen == list(range(N))


@pytest.mark.parametrize("workers,prefetch", [(0, 0), (1, 0), (2, 3)])
def test_exact_resume_with_shuffle_crop_and_mirror(mnist, workers, prefetch):
    url, _ = mnist
    spec = TransformSpec(crop_size=5, mirror=True, scale=0.5)
    kw = dict(rank=1, world_size=2, phase=TRAIN, batch_size=6, seed=3, transform=spec, workers=workers,
              prefetch=prefetch)
    it = make_batch_iterator(url, **kw)
    for _ in range(11):
        next(it)
    state = it.state_dict()
    expected = [next(it) for _ in range(9)]
    resumed = make_batch_iterator(url, **kw)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert ids(got) == ids(want)
        assert torch.equal(got["data"], want["data"])
    it.close()
    resumed.close()


def test_worker_settings_do_not_change_batches(mnist):
    url, _ = mnist
    spec = TransformSpec(crop_size=4, mirror=True)
    runs = []
    for workers, prefetch in [(0, 0), (2, 2)]:
        it = make_batch_iterator(url, phase=TRAIN, batch_size=16, seed=8, transform=spec, workers=workers,
                                 prefetch=prefetch)
        runs.append([next(it) for _ in range(12)])
        it.close()
    for a, b in zip(*runs):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])


def test_transform_applied_as_transformer(mnist):
    url, images = mnist
    mean = np.random.default_rng(0).uniform(0, 255, (1, 8, 6)).astype(np.float32)
    spec = TransformSpec(mean=mean, scale=0.25, crop_size=4)
    batch = next(make_batch_iterator(url, phase=TEST, batch_size=10, transform=spec))
    t = Transformer(spec, TEST)
    x = images[ids(batch)][:, None]
    want = t.apply(x, *t.sample_params(10, 8, 6, np.random.default_rng(0)))
    assert torch.equal(batch["data"], want)


def test_top_mapping_and_errors(mnist):
    url, _ = mnist
    it = make_batch_iterator(url, phase=TEST, batch_size=4, tops=["image", "target"])
    batch = next(it)
    assert set(batch) == {"image", "target"} and it.shapes() == {"image": (4, 1, 8, 6), "target": (4,)}
    with pytest.raises(DataSourceError, match="no field for top 'extra'"):
        make_batch_iterator(url, phase=TEST, batch_size=4, tops=["data", "label", "extra"])
    with pytest.raises(DataSourceError, match=r"dataset '/nonexistent/ds' does not exist"):
        make_batch_iterator("/nonexistent/ds", phase=TEST, batch_size=4)


def test_encoded_images_and_force_gray(tmp_path):
    import cv2

    list_path, images, labels, names = write_image_list(tmp_path, n=6)
    convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"), str(tmp_path / "ds"))
    batch = next(make_batch_iterator(str(tmp_path / "ds"), phase=TEST, batch_size=6))
    np.testing.assert_array_equal(batch["data"].numpy(), images)   # kept as PNG, decoded as BGR
    gray = next(make_batch_iterator(str(tmp_path / "ds"), phase=TEST, batch_size=6, color="gray"))
    want = np.stack([cv2.imread(str(tmp_path / n), cv2.IMREAD_GRAYSCALE) for n in names])[:, None]
    np.testing.assert_array_equal(gray["data"].numpy(), want)


def test_incomplete_dataset_is_refused(mnist, tmp_path):
    import shutil

    url, _ = mnist
    shutil.copytree(url, tmp_path / "copy")
    (tmp_path / "copy" / "_SUCCESS").unlink()
    with pytest.raises(DataSourceError, match="incomplete"):
        make_batch_iterator(str(tmp_path / "copy"), phase=TEST, batch_size=4)
