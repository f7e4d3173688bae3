"""The forks' fields: text prototxts parse by name, fork-written caffemodels by number.

The binary cases are built field by field from the forks' own numbers (SegNet's upsample_param
137, R-FCN's psroi_pooling_param 10001, SSD's norm_param 206, ...), not with our schema, so they
fail if our numbers or the renumbering table in hovcaffe.caffe.forkcompat go wrong.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import blob_to_array, parse_caffemodel, parse_net, parse_solver
from hovcaffe.caffe.wire import encode_varint, len_field


def _varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _float_field(number: int, value: float) -> bytes:
    return encode_varint((number << 3) | 5) + struct.pack("<f", value)


def _string(number: int, text: str) -> bytes:
    return len_field(number, text.encode())


def _blob(values: list[float], shape: list[int]) -> bytes:
    dims = b"".join(encode_varint(d) for d in shape)
    return (len_field(7, len_field(1, dims))
            + len_field(5, struct.pack(f"<{len(values)}f", *values)))


def _layer(name: str, type_: str, *parts: bytes) -> bytes:
    return len_field(100, _string(1, name) + _string(2, type_) + b"".join(parts))


def test_segnet_caffemodel_with_upsample_137_and_bn_45_loads():
    upsample = len_field(137, _varint_field(1, 2) + _varint_field(4, 1) + _varint_field(6, 30))
    bn_blobs = b"".join(len_field(7, _blob([float(i + k) for i in range(4)], [1, 4, 1, 1]))
                        for k in range(4))
    bn = len_field(45, _varint_field(3, 1))  # bn_mode: INFERENCE
    data = (_string(1, "segnet") + _layer("conv1_bn", "BN", bn, bn_blobs)
            + _layer("upsample4", "Upsample", upsample))
    net = parse_caffemodel(data, "segnet.caffemodel")
    bn_layer, up = net.layer
    assert bn_layer.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert [blob_to_array(b).reshape(-1).tolist() for b in bn_layer.blobs][3] == [3, 4, 5, 6]
    assert up.upsample_param.scale == 2 and up.upsample_param.pad_out_h
    assert up.upsample_param.upsample_h == 30
    assert not up.HasField("embed_param")


def test_dense_image_data_138_is_not_read_as_tile_param():
    dense = len_field(138, _string(1, "train.txt") + _varint_field(2, 4))
    net = parse_caffemodel(_layer("data", "DenseImageData", dense))
    assert net.layer[0].dense_image_data_param.source == "train.txt"
    assert net.layer[0].dense_image_data_param.batch_size == 4
    assert not net.layer[0].HasField("tile_param")


def test_rfcn_psroi_pooling_10001_is_not_read_as_source_class():
    psroi = len_field(10001, _float_field(1, 0.0625) + _varint_field(2, 21) + _varint_field(3, 7))
    net = parse_caffemodel(_layer("psroipooled_cls_rois", "PSROIPooling", psroi))
    param = net.layer[0].psroi_pooling_param
    assert (param.spatial_scale, param.output_dim, param.group_size) == (0.0625, 21, 7)
    assert not net.layer[0].HasField("source_class")


def test_caffeonspark_source_class_10001_still_reads_as_source_class():
    net = parse_caffemodel(_layer("data", "MemoryData", _string(10001, "com.yahoo.ml.caffe.LMDB")))
    assert net.layer[0].source_class == "com.yahoo.ml.caffe.LMDB"


def test_ssd_and_faster_rcnn_numbers_parse_unmoved():
    norm = len_field(206, _varint_field(1, 0) + _varint_field(3, 0) + _float_field(4, 1e-6))
    permute = len_field(202, b"".join(_varint_field(1, k) for k in (0, 2, 3, 1)))
    smooth = len_field(8266712, _float_field(1, 3.0))
    roi = len_field(8266711, _varint_field(1, 7) + _varint_field(2, 6) + _float_field(3, 0.0625))
    shuffle = len_field(164, _varint_field(1, 3))
    interp = len_field(153, _varint_field(3, 8))
    relu6 = len_field(100000, _float_field(1, 0.1))
    data = (_layer("n", "Normalize", norm) + _layer("p", "Permute", permute)
            + _layer("s", "SmoothL1Loss", smooth) + _layer("r", "ROIPooling", roi)
            + _layer("c", "ShuffleChannel", shuffle) + _layer("i", "Interp", interp)
            + _layer("q", "ReLU6", relu6))
    n, p, s, r, c, i, q = parse_caffemodel(data).layer
    assert not n.norm_param.across_spatial and not n.norm_param.channel_shared
    assert n.norm_param.eps == pytest.approx(1e-6)
    assert list(p.permute_param.order) == [0, 2, 3, 1]
    assert s.smooth_l1_loss_param.sigma == 3.0
    assert (r.roi_pooling_param.pooled_h, r.roi_pooling_param.pooled_w) == (7, 6)
    assert c.shuffle_channel_param.group == 3
    assert i.interp_param.zoom_factor == 8
    assert q.relu6_param.negative_slope == pytest.approx(0.1)


def test_fork_fields_parse_in_text():
    net = parse_net("""
    layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
      transform_param { resize_param { prob: 1 resize_mode: WARP height: 300 width: 300
                                       interp_mode: LINEAR interp_mode: AREA }
                        emit_constraint { emit_type: CENTER }
                        distort_param { brightness_prob: 0.5 brightness_delta: 32 }
                        expand_param { prob: 0.5 max_expand_ratio: 4 } }
      annotated_data_param { batch_sampler { max_sample: 1 max_trials: 1 }
                             label_map_file: "labelmap.prototxt" } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
    layer { name: "up" type: "Upsample" bottom: "pool" top: "up" upsample_param { scale: 2 } }
    layer { name: "dense" type: "DenseImageData" top: "d" top: "l"
      dense_image_data_param { source: "x.txt" batch_size: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "d" bottom: "l"
      loss_param { weight_by_label_freqs: true class_weighting: 0.2 class_weighting: 3.5 } }
    """, "fork.prototxt")
    data, pool, up, dense, loss = net.layer
    assert data.transform_param.resize_param.height == 300
    assert list(data.transform_param.resize_param.interp_mode) == [1, 2]
    assert data.transform_param.expand_param.max_expand_ratio == 4
    assert data.annotated_data_param.label_map_file == "labelmap.prototxt"
    assert pool.pooling_param.HasField("ceil_mode") and not pool.pooling_param.ceil_mode
    assert up.upsample_param.scale == 2
    assert dense.dense_image_data_param.source == "x.txt"
    assert loss.loss_param.weight_by_label_freqs
    assert list(loss.loss_param.class_weighting) == pytest.approx([0.2, 3.5])


def test_ssd_solver_fields_parse_beside_bvlc_ones():
    solver = parse_solver('net: "train.prototxt" base_lr: 0.001 eval_type: "detection" '
                          'ap_version: "11point" show_per_class_result: true '
                          'layer_wise_reduce: false weights: "init.caffemodel"', "solver.prototxt")
    assert solver.eval_type == "detection" and solver.ap_version == "11point"
    assert solver.show_per_class_result and not solver.layer_wise_reduce
    assert list(solver.weights) == ["init.caffemodel"]


def test_blob_bytes_survive_the_renumbering():
    """The rewrite keeps every other byte: a big blob next to a moved field reads back equal."""
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    upsample = len_field(137, _varint_field(1, 2))
    data = (_layer("conv", "Convolution", len_field(7, _blob(values.tolist(), [10, 100])))
            + _layer("up", "Upsample", upsample))
    net = parse_caffemodel(data)
    np.testing.assert_array_equal(blob_to_array(net.layer[0].blobs[0]).reshape(-1), values)
    assert net.layer[1].upsample_param.scale == 2


def test_enet_fork_numbers_upsample_147_and_dense_image_data_46():
    upsample = len_field(147, _varint_field(1, 2))
    dense = len_field(46, _string(1, "train.txt"))
    net = parse_caffemodel(_layer("up", "Upsample", upsample) + _layer("d", "DenseImageData", dense))
    assert net.layer[0].upsample_param.scale == 2 and not net.layer[0].HasField("swish_param")
    assert net.layer[1].dense_image_data_param.source == "train.txt"


def test_opencv_proposal_param_parses_in_text():
    net = parse_net('layer { name: "proposal" type: "Proposal" bottom: "a" bottom: "b" '
                    'bottom: "c" top: "rois" proposal_param { feat_stride: 16 base_size: 16 '
                    'ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 '
                    'post_nms_topn: 100 } }')
    p = net.layer[0].proposal_param
    assert list(p.scale) == [8, 16, 32] and p.post_nms_topn == 100
    assert p.pre_nms_topn == 6000 and p.nms_thresh == pytest.approx(0.7)
