"""SegNet's DenseImageData feed: image and label image read, resized, mirrored and cropped together."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.data_layer_types import FED_TYPES
from hovcaffe.caffe.io import parse_text
from hovcaffe.caffe.shapes import declared_top_shapes
from hovcaffe.data.registry import FeedContext, make_feed
from hovcaffe.errors import DataSourceError, NetDefinitionError

H, W, CLASSES = 12, 16, 5


def write_pairs(folder, count: int = 7) -> str:
    """`count` colour images whose pixel codes (h * W + w + 3 * i) % 251 fix each label (% 5)."""
    lines = []
    hh, ww = np.mgrid[0:H, 0:W]
    for i in range(count):
        code = ((hh * W + ww + 3 * i) % 251).astype(np.uint8)
        image = np.stack([code, 255 - code, np.full_like(code, i)], axis=-1)
        cv2.imwrite(str(folder / f"img{i}.png"), image)
        cv2.imwrite(str(folder / f"lab{i}.png"), (code % CLASSES).astype(np.uint8))
        lines.append(f"img{i}.png lab{i}.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return "list.txt"


def dense_layer(params: str, transform: str = "") -> caffe_pb2.LayerParameter:
    return parse_text(f'name: "data" type: "DenseImageData" top: "data" top: "label" '
                      f'dense_image_data_param {{ {params} }} {transform}', caffe_pb2.LayerParameter())


def feed(tmp_path, params: str, transform: str = "", phase: int = 0, **ctx):
    source = write_pairs(tmp_path)
    layer = dense_layer(f'source: "{source}" root_folder: "" {params}', transform)
    return make_feed(layer, FeedContext(phase=phase, seed=3, base_dir=str(tmp_path), **ctx))


def test_dense_image_data_is_a_fed_type_with_declared_shapes():
    assert "DenseImageData" in FED_TYPES
    layer = dense_layer("batch_size: 4 new_height: 30 new_width: 40 crop_height: 8 crop_width: 10")
    assert declared_top_shapes(layer) == [(4, 3, 8, 10), (4, 1, 8, 10)]
    layer = dense_layer("batch_size: 2 new_height: 30 new_width: 40 is_color: false")
    assert declared_top_shapes(layer) == [(2, 1, 30, 40), (2, 1, 30, 40)]


def test_pairs_are_read_in_order_with_float_pixel_values(tmp_path):
    f = feed(tmp_path, "batch_size: 3", phase=1)
    batch = next(f)
    assert batch["data"].shape == (3, 3, H, W) and batch["label"].shape == (3, 1, H, W)
    assert batch["data"].dtype == torch.float32 and batch["label"].dtype == torch.float32
    assert batch["data"][:, 2, 0, 0].tolist() == [0, 1, 2]       # images 0, 1, 2
    code = batch["data"][:, 0]
    assert torch.equal(batch["label"][:, 0], code % CLASSES)


def test_mirror_and_crop_move_image_and_label_together(tmp_path):
    f = feed(tmp_path, "batch_size: 7 mirror: true crop_height: 5 crop_width: 6")
    flipped = 0
    for _ in range(3):
        batch = next(f)
        assert batch["data"].shape == (7, 3, 5, 6) and batch["label"].shape == (7, 1, 5, 6)
        code = batch["data"][:, 0]
        assert torch.equal(batch["label"][:, 0], code % CLASSES)   # still the pixel's own label
        step = code[:, 0, 1] - code[:, 0, 0]                       # +1 unless mirrored
        flipped += int((step == -1).sum())
        assert set(step.tolist()) <= {1.0, -1.0}
    assert 0 < flipped < 21


def test_resize_keeps_label_values_class_ids(tmp_path):
    f = feed(tmp_path, "batch_size: 2 new_height: 23 new_width: 29", phase=1)
    batch = next(f)
    assert batch["data"].shape == (2, 3, 23, 29)
    assert set(torch.unique(batch["label"]).tolist()) <= set(range(CLASSES))


def test_transform_mean_and_scale_touch_the_image_only(tmp_path):
    plain = next(feed(tmp_path, "batch_size: 2", phase=1))
    shifted = next(feed(tmp_path, "batch_size: 2", 'transform_param { mean_value: 10 scale: 0.5 }',
                        phase=1))
    assert torch.allclose(shifted["data"], (plain["data"] - 10) * 0.5)
    assert torch.equal(shifted["label"], plain["label"])


def test_test_pass_ends_with_a_short_batch(tmp_path):
    f = feed(tmp_path, "batch_size: 3", phase=1)
    sizes = [len(b["data"]) for b in f]
    assert sizes == [3, 3, 1] and f.pass_samples() == 7
    assert [len(b["data"]) for b in f] == [3, 3, 1]              # the next pass starts over


def test_shuffle_resumes_exactly_and_shards_by_rank(tmp_path):
    f = feed(tmp_path, "batch_size: 3 shuffle: true mirror: true")
    next(f)
    state = f.state_dict()
    want = [next(f)["data"] for _ in range(4)]
    f.load_state_dict(state)
    assert all(torch.equal(a, next(f)["data"]) for a in want)
    ids = {int(v) for b in (next(feed(tmp_path, "batch_size: 4", phase=1, rank=1, world_size=2)),)
           for v in b["data"][:, 2, 0, 0]}
    assert ids == {1, 3, 5}


def test_epochs_are_reshuffled(tmp_path):
    f = feed(tmp_path, "batch_size: 7 shuffle: true")
    first, second = (next(f)["data"][:, 2, 0, 0].tolist() for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(7)) and first != second


@pytest.mark.parametrize("params, transform, message", [
    ("batch_size: 2", "transform_param { mirror: true }", "dense_image_data_param mirror"),
    ("batch_size: 2", "transform_param { crop_size: 4 }", "crop_height"),
    ("batch_size: 2 new_height: 5", "", "new_height and new_width"),
    ("batch_size: 2 crop_height: 50 crop_width: 50", "", "larger than"),
])
def test_bad_settings_are_named(tmp_path, params, transform, message):
    with pytest.raises((NetDefinitionError, DataSourceError), match=message):
        next(feed(tmp_path, params, transform))


def test_a_missing_label_image_names_the_list_line(tmp_path):
    (tmp_path / "odd.txt").write_text("a.png b.png\nc.png\n")
    layer = dense_layer('source: "odd.txt" batch_size: 1')
    with pytest.raises(DataSourceError, match="odd.txt:2"):
        make_feed(layer, FeedContext(phase=0, base_dir=str(tmp_path)))
