"""Whole nets from the Caffe forks (tests/zoo/forks): inspect, forward, OpenCV's dnn, export.

Weights are random (the prototxts' fillers, then random biases, BatchNorm statistics and Scale
factors so no layer is a no-op); OpenCV reads them from a .caffemodel written by hovcaffe.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import ZOO
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_net, read_solver, to_prototxt
from hovcaffe.cli import main
from hovcaffe.errors import UserInputError
from hovcaffe.export import export_net, to_onnx_bytes
from hovcaffe.layers.detection import detect
from hovcaffe.net import CaffeNet
from tests.unit.fork_helpers import max_rel, run_opencv

FORKS = ZOO / "forks"
SSD300 = FORKS / "caffe-ssd" / "VGGNet_VOC0712_SSD_300x300" / "deploy.prototxt"
MOBILENET_SSD = FORKS / "MobileNet-SSD" / "deploy.prototxt"
FASTER_RCNN = FORKS / "py-faster-rcnn" / "pascal_voc"
RFCN = FORKS / "py-R-FCN" / "ResNet-50" / "test_agnostic.prototxt"
SEGNET_BASIC = FORKS / "SegNet-Tutorial" / "Models" / "segnet_basic_inference.prototxt"
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


MINE = [p for repo in ("caffe-ssd", "MobileNet-SSD", "py-faster-rcnn", "py-R-FCN", "SegNet-Tutorial")
        for p in sorted((FORKS / repo).rglob("*.prototxt"))]


@pytest.mark.parametrize("path", MINE, ids=lambda p: str(p.relative_to(FORKS)))
def test_every_fork_file_parses(path):
    if "solver" in path.name:
        assert read_solver(str(path)).base_lr > 0
    else:
        assert len(read_net(str(path)).layer) > 5


def random_net(path, seed: int = 0, **kw) -> CaffeNet:
    torch.manual_seed(seed)
    net = CaffeNet(read_net(str(path)), "TEST", source=str(path), **kw).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
        for module in net.layers.values():
            if module.type == "BatchNorm":
                module.blobs[1].copy_(torch.rand(module.blobs[1].shape, generator=gen) + 0.5)
                module.blobs[2].fill_(1.0)
            elif module.type == "Scale":
                module.blobs[0].copy_(torch.rand(module.blobs[0].shape, generator=gen) + 0.5)
    return net


def sharpen_scores(net: CaffeNet, inputs) -> None:
    """Scale the class heads so softmax scores spread out: detections pass the thresholds."""
    with torch.no_grad():
        blobs = net(**inputs)
        for module in net.layers.values():
            if module.type == "Convolution" and module.name.endswith("mbox_conf"):
                module.blobs[0].mul_(3.0 / float(blobs[module.param.top[0]].std()))
                module.blobs[1].zero_()


def inspect_json(path, *args) -> dict:
    result = CliRunner().invoke(main, ["inspect", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows_by_key(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(-1, 7)
    return rows[np.lexsort((*rows[:, 6:2:-1].T, -rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("path, priors", [(SSD300, 8732), (MOBILENET_SSD, 1917)])
def test_ssd_inspect_counts_the_published_priors(path, priors):
    summary = inspect_json(path)
    shapes = {t: s for row in summary["layers"] for t, s in zip(row["tops"], row["top_shapes"])}
    # SSD300: 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4; MobileNet-SSD: 19^2*3 + ... + 1*6
    assert shapes["mbox_priorbox"] == [1, 2, priors * 4]
    assert shapes["mbox_conf_flatten"] == [1, priors * 21]
    assert summary["outputs"] == ["detection_out"]


@pytest.mark.parametrize("path", [SSD300, MOBILENET_SSD], ids=["ssd300", "mobilenet_ssd"])
def test_ssd_forward_matches_opencv(path, tmp_path):
    net = random_net(path)
    rng = np.random.RandomState(0)
    inputs = {"data": rng.rand(1, 3, 300, 300).astype(np.float32)}
    sharpen_scores(net, {"data": torch.from_numpy(inputs["data"])})
    with torch.no_grad():
        blobs = net(data=torch.from_numpy(inputs["data"]))
    ours = [blobs[n].numpy() for n in HEADS + ["detection_out"]]
    refs = run_opencv(path.read_text(), net, inputs, HEADS + ["detection_out"], tmp_path)
    for a, r in zip(ours[:3], refs[:3]):
        assert max_rel(a, r.reshape(a.shape)) < 1e-5
    det, ref = ours[3].reshape(-1, 7), refs[3].reshape(-1, 7)
    ref = ref[ref[:, 2] > 0]        # OpenCV pads to keep_top_k rows of score 0
    assert len(det) > 50 and len(det) == len(ref)
    assert max_rel(rows_by_key(det), rows_by_key(ref)) < 1e-5


def test_ssd_heads_export_and_the_documented_post_process(tmp_path):
    import onnxruntime as ort
    net = random_net(MOBILENET_SSD)
    data = torch.rand(1, 3, 300, 300, generator=torch.Generator().manual_seed(5))
    sharpen_scores(net, {"data": data})
    with torch.no_grad():
        blobs = net(data=data)
    session = ort.InferenceSession(to_onnx_bytes(net, outputs=HEADS), providers=["CPUExecutionProvider"])
    heads = session.run(HEADS, {"data": data.numpy()})
    for name, value in zip(HEADS, heads):
        assert max_rel(value, blobs[name].numpy()) < 1e-5
    layer = net.layer("detection_out")
    rows = detect(*(torch.from_numpy(h) for h in heads), **layer.options)
    assert rows.shape[2] > 10
    assert max_rel(rows_by_key(rows.numpy()), rows_by_key(blobs["detection_out"].numpy())) < 1e-5
    with pytest.raises(UserInputError, match="mbox_loc,mbox_conf_flatten,mbox_priorbox"):
        export_net(net, "onnx", tmp_path / "all.onnx")


@pytest.mark.parametrize("path, pool, pool_shape, deltas", [
    (FASTER_RCNN / "ZF" / "test.prototxt", "roi_pool_conv5", [300, 256, 6, 6], 84),
    (FASTER_RCNN / "VGG16" / "test.prototxt", "pool5", [300, 512, 7, 7], 84),
    (RFCN, "psroipooled_cls_rois", [300, 21, 7, 7], 8),
], ids=["faster-rcnn-zf", "faster-rcnn-vgg16", "r-fcn-resnet50"])
def test_region_nets_run_with_the_built_in_proposal_layer(path, pool, pool_shape, deltas, tmp_path):
    summary = inspect_json(path)
    types = {row["name"]: row["type"] for row in summary["layers"]}
    assert types["proposal"] == "Python"
    shapes = {t: s for row in summary["layers"] for t, s in zip(row["tops"], row["top_shapes"])}
    assert shapes["rois"] == [300, 5] and shapes[pool] == pool_shape   # cfg.TEST: 300 proposals
    assert shapes["cls_prob"] == [300, 21] and shapes["bbox_pred"] == [300, deltas]
    net = random_net(path, input_shapes={"data": (1, 3, 160, 224)})
    data = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        blobs = net(data=data, im_info=torch.tensor([[160.0, 224.0, 1.0]]))
    rois, prob = blobs["rois"], blobs["cls_prob"]
    assert 0 < len(rois) <= 300 and prob.shape == (len(rois), 21)
    assert blobs["bbox_pred"].shape == (len(rois), deltas)
    assert torch.allclose(prob.sum(1), torch.ones(len(rois)), atol=1e-5)
    assert float(rois[:, 3].max()) <= 223 and float(rois[:, 4].max()) <= 159
    with pytest.raises(UserInputError, match="proposal.*cannot be exported"):
        export_net(net, "onnx", tmp_path / "frcnn.onnx")
    # The convolutional part and the RPN heads export.
    import onnxruntime as ort
    outs = ["rpn_cls_prob_reshape", "rpn_bbox_pred"]   # (the ZF net names them the same)
    session = ort.InferenceSession(to_onnx_bytes(net, outputs=outs), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]   # im_info only feeds the proposals
    got = session.run(outs, {"data": data.numpy()})
    for name, value in zip(outs, got):
        assert max_rel(value, blobs[name].numpy()) < 1e-5


def he_weights(net: CaffeNet, seed: int = 4) -> None:
    """He-scaled random weights: activations keep their size through deep nets (with the
    prototxts' small Gaussian fillers the fully connected heads give constants)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)


def regions_as_input(path, count: int, hw: tuple[int, int]):
    """The net with its proposal layer replaced by an Input of `count` regions (OpenCV cannot
    run py-faster-rcnn's Python layer, and its own Proposal layer keeps small boxes)."""
    net = read_net(str(path))
    layers = [layer for layer in net.layer if layer.name != "proposal"]
    inputs = layers[0]                          # the upgraded `input:` fields: data, im_info
    index = list(inputs.top).index("im_info")   # im_info fed only the proposals
    del inputs.top[index], inputs.input_param.shape[index]
    inputs.input_param.shape[0].dim[2:] = hw
    regions = caffe_pb2.LayerParameter(name="regions", type="Input", top=["rois"])
    regions.input_param.shape.add(dim=[count, 5])
    del net.layer[:]
    net.layer.extend([inputs, regions, *layers[1:]])
    return net


@pytest.mark.parametrize("path, outputs", [
    (FASTER_RCNN / "ZF" / "test.prototxt", ["cls_score", "cls_prob", "bbox_pred"]),
    # ResNet-50 on random weights gives logits in the thousands; softmax of those only
    # magnifies rounding, so the scores before it are compared.
    (RFCN, ["cls_score", "bbox_pred"]),
], ids=["faster-rcnn-zf", "r-fcn-resnet50"])
def test_region_nets_match_opencv_on_given_regions(path, outputs, tmp_path):
    net_param = regions_as_input(path, 40, (160, 224))
    text = to_prototxt(net_param)
    (tmp_path / "net.prototxt").write_text(text)
    net = random_net(tmp_path / "net.prototxt")
    he_weights(net)
    rng = np.random.RandomState(0)
    x1, y1 = rng.uniform(0, 200, 40), rng.uniform(0, 140, 40)
    rois = np.stack([np.zeros(40), x1, y1, np.minimum(x1 + rng.uniform(8, 120, 40), 223),
                     np.minimum(y1 + rng.uniform(8, 100, 40), 159)], 1).astype(np.float32)
    inputs = {"data": rng.rand(1, 3, 160, 224).astype(np.float32), "rois": rois}
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    producer = {top: layer.name for layer in net_param.layer for top in layer.top}
    refs = run_opencv(text, net, inputs, [producer[o] for o in outputs], tmp_path)
    for name, ref in zip(outputs, refs):
        ours = blobs[name].numpy()
        assert ours.std() > 1e-3 * np.abs(ours).max()          # not a constant
        assert max_rel(ours, ref.reshape(ours.shape)) < 1e-5, name


def test_fast_rcnn_on_given_regions_exports_whole_to_onnx():
    import onnxruntime as ort
    net_param = regions_as_input(FASTER_RCNN / "ZF" / "test.prototxt", 40, (160, 224))
    net = CaffeNet(net_param, "TEST").eval()
    he_weights(net)
    rng = np.random.RandomState(1)
    x1, y1 = rng.uniform(0, 200, 40), rng.uniform(0, 140, 40)
    rois = np.stack([np.zeros(40), x1, y1, x1 + rng.uniform(8, 60, 40), y1 + rng.uniform(8, 60, 40)],
                    1).astype(np.float32)
    data = rng.rand(1, 3, 160, 224).astype(np.float32)
    outs = ["cls_prob", "bbox_pred"]
    with torch.no_grad():
        blobs = net(data=torch.from_numpy(data), rois=torch.from_numpy(rois))
    session = ort.InferenceSession(to_onnx_bytes(net, outputs=outs), providers=["CPUExecutionProvider"])
    for name, value in zip(outs, session.run(outs, {"data": data, "rois": rois})):
        assert max_rel(value, blobs[name].numpy()) < 1e-5, name


def test_segnet_basic_inspects_runs_and_exports():
    shapes = ["--input-shape", "data=1,3,360,480", "--input-shape", "label=1,1,360,480"]
    summary = inspect_json(SEGNET_BASIC, *shapes)
    tops = {t: s for row in summary["layers"] for t, s in zip(row["tops"], row["top_shapes"])}
    assert tops["prob"] == [1, 11, 360, 480] and tops["pool4_mask"] == [1, 64, 23, 30]
    net = random_net(SEGNET_BASIC, input_shapes={"data": (1, 3, 360, 480), "label": (1, 1, 360, 480)})
    data = torch.rand(1, 3, 360, 480, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        prob = net(data=data, label=torch.zeros(1, 1, 360, 480))["prob"]
    assert torch.allclose(prob.sum(1), torch.ones(1, 360, 480), atol=1e-5)
    import onnxruntime as ort
    masks = ["pool1_mask", "pool2_mask", "pool3_mask", "pool4_mask"]
    session = ort.InferenceSession(to_onnx_bytes(net, outputs=masks + ["prob"]),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]   # the label feeds no output
    *got_masks, got = session.run(masks + ["prob"], {"data": data.numpy()})
    with torch.no_grad():
        blobs = net(data=data, label=torch.zeros(1, 1, 360, 480))
    # Max-pool switches are discontinuous: onnxruntime's convolutions differ from torch's by
    # ~1e-6, so a window whose two largest values are that close may switch (about one window
    # in a million here) and move its value in the decoder. Everything else must agree.
    for name, value in zip(masks, got_masks):
        assert np.count_nonzero(value != blobs[name].numpy()) <= 2, name
    close = np.abs(got - prob.numpy()) <= 1e-5 * np.abs(prob.numpy()).max()
    assert close.mean() > 0.95
