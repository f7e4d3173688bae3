"""Annotated detection data: `convert annoset` from a hand-built AnnotatedDatum LMDB, VOC XML
lists and JSON; bad records; the AnnotatedData feed's box-following augmentation, ragged
ground truth and exact resume; SSD's sampler and emit rules by hand."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.data import box_augment as aug
from hovcaffe.data.convert import convert_source, make_source
from hovcaffe.data.dataset import open_dataset
from hovcaffe.data.registry import FeedContext, make_feed
from hovcaffe.errors import DataSourceError

RED = (0, 0, 255)   # BGR
LABEL_MAP = """item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "square" label: 1 display_name: "square" }
item { name: "disc" label: 2 display_name: "disc" }
"""


def picture(h: int, w: int, box) -> np.ndarray:
    """A grey H x W image with a red rectangle at the normalized `box`."""
    img = np.full((h, w, 3), 90, np.uint8)
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    img[y0:y1, x0:x1] = RED
    return img


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def annotated_datum(img: np.ndarray, groups) -> bytes:
    """groups: [(label, [(xmin, ymin, xmax, ymax, difficult), ...]), ...]"""
    anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    anno.datum.data = png(img)
    anno.datum.encoded = True
    for label, boxes in groups:
        group = anno.annotation_group.add(group_label=label)
        for i, (x0, y0, x1, y1, diff) in enumerate(boxes):
            a = group.annotation.add(instance_id=i)
            a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0, y0, x1, y1
            a.bbox.difficult = bool(diff)
    return anno.SerializeToString()


def write_lmdb(path, records) -> str:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key.encode(), value)
    env.close()
    return str(path)


def test_fork_field_numbers():
    # SSD's caffe.proto numbers, which an LMDB written by convert_annoset carries.
    f = {m: {x.name: x.number for x in getattr(caffe_pb2, m).DESCRIPTOR.fields}
         for m in ("AnnotatedDatum", "AnnotationGroup", "Annotation", "NormalizedBBox")}
    assert f["AnnotatedDatum"] == {"datum": 1, "type": 2, "annotation_group": 3}
    assert f["AnnotationGroup"] == {"group_label": 1, "annotation": 2}
    assert f["Annotation"] == {"instance_id": 1, "bbox": 2}
    assert f["NormalizedBBox"] == {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4, "label": 5,
                                   "difficult": 6, "score": 7, "size": 8}


GROUPS_A = [(1, [(.1, .2, .5, .6, 0), (.6, .6, .9, .95, 1)]), (2, [(.0, .0, .25, .3, 0)])]
GROUPS_B = [(2, [(.3, .3, .7, .8, 0)])]


@pytest.fixture()
def lmdb_set(tmp_path):
    a, b = picture(40, 50, (.1, .2, .5, .6)), picture(30, 30, (.3, .3, .7, .8))
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)
    url = write_lmdb(tmp_path / "train_lmdb", [("000_a", annotated_datum(a, GROUPS_A)),
                                               ("001_b", annotated_datum(b, GROUPS_B))])
    return url, str(tmp_path / "labelmap.prototxt"), [a, b]


def rows_of(dest):
    ds = open_dataset(dest)
    return [r for g in range(len(ds.group_sizes))
            for r in ds.read_group(g, ["data", "labels", "boxes", "difficult", "id"]).to_pylist()]


def test_lmdb_converts_to_rows_equal_to_its_records(lmdb_set, tmp_path):
    url, label_map, images = lmdb_set
    report = convert_source(make_source("annoset", url, label_map=label_map), str(tmp_path / "out"))
    assert report.count == 2 and report.skipped == 0
    rows = rows_of(str(tmp_path / "out"))
    assert [r["id"] for r in rows] == [f"{url} key 000_a", f"{url} key 001_b"]
    assert rows[0]["labels"] == [1, 1, 2] and rows[0]["difficult"] == [0, 1, 0]
    np.testing.assert_allclose(rows[0]["boxes"], [.1, .2, .5, .6, .6, .6, .9, .95, 0, 0, .25, .3],
                               rtol=1e-6)
    assert rows[1]["labels"] == [2]
    for row, img in zip(rows, images):
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(row["data"], np.uint8), 1), img)
    info = open_dataset(str(tmp_path / "out")).info
    assert info.options["label_map"] == [["none_of_the_above", 0, "background"],
                                         ["square", 1, "square"], ["disc", 2, "disc"]]


@pytest.mark.parametrize("groups,reason", [
    ([(1, [(.1, .2, 1.2, .6, 0)])], "outside [0, 1]"),
    ([(1, [])], "annotation group 0 (label 1) is empty"),
    ([(7, [(.1, .2, .5, .6, 0)])], "label 7 is not in the label map"),
])
def test_bad_records_name_the_record_or_are_skipped_and_counted(tmp_path, groups, reason):
    (tmp_path / "lm.prototxt").write_text(LABEL_MAP)
    good = annotated_datum(picture(20, 20, (.1, .1, .5, .5)), GROUPS_B)
    bad = annotated_datum(picture(20, 20, (.1, .1, .5, .5)), groups)
    url = write_lmdb(tmp_path / "db", [("a", good), ("b", bad), ("c", good)])
    source = make_source("annoset", url, label_map=str(tmp_path / "lm.prototxt"))
    with pytest.raises(DataSourceError, match=rf"key b.*{__import__('re').escape(reason)}"):
        convert_source(source, str(tmp_path / "out"))
    report = convert_source(source, str(tmp_path / "out2"), on_error="skip")
    assert (report.count, report.skipped) == (2, 1)
    assert report.errors[0][0].endswith("key b") and reason in report.errors[0][1]


def test_voc_xml_list_and_json_inputs(tmp_path):
    (tmp_path / "lm.prototxt").write_text(LABEL_MAP)
    cv2.imwrite(str(tmp_path / "a.png"), picture(40, 80, (.25, .25, .5, .75)))
    (tmp_path / "a.xml").write_text(
        "<annotation><size><width>80</width><height>40</height><depth>3</depth></size>"
        "<object><name>square</name><difficult>1</difficult><bndbox><xmin>20</xmin><ymin>10</ymin>"
        "<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>")
    (tmp_path / "list.txt").write_text("a.png a.xml\n")
    convert_source(make_source("annoset", str(tmp_path / "list.txt"),
                               label_map=str(tmp_path / "lm.prototxt")), str(tmp_path / "voc"))
    (row,) = rows_of(str(tmp_path / "voc"))
    assert row["labels"] == [1] and row["difficult"] == [1]
    np.testing.assert_allclose(row["boxes"], [.25, .25, .5, .75], rtol=1e-6)

    (tmp_path / "boxes.json").write_text(json.dumps([
        {"image": "a.png", "boxes": [{"label": "disc", "bbox": [.1, .1, .3, .4]},
                                     {"label": 1, "bbox": [.5, .5, .9, .9], "difficult": 1}]},
        {"image": "a.png", "boxes": [{"label": "triangle", "bbox": [.1, .1, .3, .4]}]}]))
    src = make_source("annoset", str(tmp_path / "boxes.json"), label_map=str(tmp_path / "lm.prototxt"))
    with pytest.raises(DataSourceError, match=r"boxes.json\[1\].*'triangle' is not in the label map"):
        convert_source(src, str(tmp_path / "js"))
    report = convert_source(src, str(tmp_path / "js"), on_error="skip")
    assert (report.count, report.skipped) == (1, 1)
    (row,) = rows_of(str(tmp_path / "js"))
    assert row["labels"] == [2, 1] and row["difficult"] == [0, 1]


# ---------------------------------------------------------------- the feed

def feed_for(dataset: str, transform: str = "", samplers: str = "", batch: int = 2, seed: int = 5,
             phase=caffe_pb2.TRAIN, rank: int = 0, size: int = 1):
    net = parse_net(f"""layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
        data_param {{ source: "{dataset}" batch_size: {batch} }}
        transform_param {{ {transform} }} annotated_data_param {{ {samplers} }} }}""")
    return make_feed(net.layer[0], FeedContext(phase=phase, rank=rank, world_size=size, seed=seed))


@pytest.fixture()
def dataset(lmdb_set, tmp_path):
    url, label_map, _ = lmdb_set
    convert_source(make_source("annoset", url, label_map=label_map), str(tmp_path / "ds"))
    return str(tmp_path / "ds")


def test_plain_feed_gives_ragged_ground_truth_rows(dataset):
    feed = feed_for(dataset, "resize_param { height: 30 width: 30 resize_mode: WARP }")
    batch = next(feed)
    assert tuple(batch["data"].shape) == (2, 3, 30, 30)
    gt = batch["label"][0, 0].numpy()
    # Image 0 holds three boxes (two of label 1, one of label 2), image 1 one box: 4 rows.
    np.testing.assert_allclose(gt, [[0, 1, 0, .1, .2, .5, .6, 0], [0, 1, 1, .6, .6, .9, .95, 1],
                                    [0, 2, 0, 0, 0, .25, .3, 0], [1, 2, 0, .3, .3, .7, .8, 0]],
                               rtol=1e-6, atol=1e-7)


AUGMENT = ("mirror: true mean_value: 104 mean_value: 117 mean_value: 123 "
           "resize_param { height: 48 width: 64 resize_mode: FIT_LARGE_SIZE_AND_PAD pad_value: 0 } "
           "distort_param { brightness_prob: 0.5 brightness_delta: 10 } "
           "expand_param { prob: 0.5 max_expand_ratio: 2 } "
           "emit_constraint { emit_type: CENTER }")
SAMPLERS = ("batch_sampler { sampler { min_scale: 1 max_scale: 1 } max_sample: 1 max_trials: 1 } "
            "batch_sampler { sampler { min_scale: 0.5 max_scale: 1 min_aspect_ratio: 0.5 "
            "max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1 "
            "max_trials: 50 }")


def test_boxes_follow_the_pixels_through_every_augmentation(tmp_path):
    # One red rectangle per image: after expand, crop, resize with padding and mirror, the
    # rectangle's red pixels must lie inside the box the feed reports (and fill most of it).
    records = []
    rs = np.random.RandomState(0)
    for i in range(6):
        x0, y0 = rs.uniform(0, .5, 2)
        box = (x0, y0, x0 + rs.uniform(.3, .5), y0 + rs.uniform(.3, .5))
        records.append((f"{i:03d}", annotated_datum(picture(60, 80, box), [(1, [(*box, 0)])])))
    url = write_lmdb(tmp_path / "db", records)
    convert_source(make_source("annoset", url), str(tmp_path / "ds"))
    feed = feed_for(str(tmp_path / "ds"), AUGMENT, SAMPLERS, batch=3)
    checked = 0
    for _ in range(4):
        batch = next(feed)
        img = batch["data"].numpy() + np.array([104, 117, 123], np.float32).reshape(1, 3, 1, 1)
        for row in batch["label"][0, 0].numpy():
            if row[0] < 0:
                continue
            red = (img[int(row[0]), 2] > 200) & (img[int(row[0]), 1] < 60)
            ys, xs = np.nonzero(red)
            h, w = red.shape
            x0, y0, x1, y1 = row[3] * w, row[4] * h, row[5] * w, row[6] * h
            assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 0.5
            assert ys.min() >= y0 - 1.5 and ys.max() <= y1 + 0.5
            assert red.sum() >= 0.6 * (x1 - x0) * (y1 - y0)
            checked += 1
    assert checked >= 8


def test_resume_replays_the_same_batches_and_ranks_split_rows(dataset):
    feed = feed_for(dataset, AUGMENT, SAMPLERS)
    next(feed)
    state = feed.state_dict()
    want = [next(feed) for _ in range(2)]
    again = feed_for(dataset, AUGMENT, SAMPLERS)
    again.load_state_dict(state)
    for a, b in zip(want, [next(again) for _ in range(2)]):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    r1 = feed_for(dataset, "resize_param { height: 30 width: 30 }", batch=1, rank=1, size=2,
                  phase=caffe_pb2.TEST)
    assert r1.pass_samples() == 1
    assert next(r1)["label"][0, 0, :, 1].tolist() == [2]     # rank 1 holds record 001_b


# ---------------------------------------------------------------- SSD's rules by hand

def test_sample_constraint_and_emit_rules_by_hand():
    objects = np.array([[0, 0, .5, .5]], np.float32)
    c = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.5)
    assert aug._satisfies(np.array([0, 0, .5, .6], np.float32), objects, c)      # IoU 0.83
    assert not aug._satisfies(np.array([.25, .25, .75, .75], np.float32), objects, c)  # 1/7
    assert aug._satisfies(np.array([.6, .6, 1, 1], np.float32), objects, caffe_pb2.SampleConstraint())
    cov = caffe_pb2.SampleConstraint(min_object_coverage=0.9)
    assert aug._satisfies(np.array([0, 0, 1, 1], np.float32), objects, cov)
    # Emit CENTER keeps a box whose centre is in the crop, clipped and re-expressed in it.
    crop = np.array([.2, .2, .6, .6], np.float32)
    boxes = np.array([[.1, .1, .5, .5], [.5, .5, .9, .9]], np.float32)
    out, kept = aug.project(crop, boxes, caffe_pb2.EmitConstraint())
    assert kept.tolist() == [0]                            # centre (.7, .7) is outside
    np.testing.assert_allclose(out, [[0, 0, .75, .75]], rtol=1e-6)
    overlap = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.MIN_OVERLAP,
                                       emit_overlap=0.2)
    _, kept = aug.project(crop, boxes, overlap)            # coverages 9/16 and 1/16
    assert kept.tolist() == [0]
