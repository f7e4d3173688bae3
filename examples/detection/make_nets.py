"""Writes the demo's MobileNet-SSD-style prototxts (train, test, deploy) next to this file.

    python examples/detection/make_nets.py

The nets follow chuanqi305/MobileNet-SSD's layout at a toy scale for 96 x 96 images: a
depthwise-separable body (Convolution with group, BatchNorm + Scale, ReLU), heads on the 12x12,
6x6 and 3x3 feature maps (loc / conf convolutions, Permute, Flatten, PriorBox, Concat), then
MultiBoxLoss (train), DetectionOutput + DetectionEvaluate (test) or DetectionOutput (deploy).
The committed prototxts are this script's output.
"""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 96
NUM_CLASSES = 4          # background + square, disc, triangle
# (name, channels out, stride, depthwise first) of the body
BODY = [("conv0", 16, 2, False), ("conv1", 32, 1, True), ("conv2", 64, 2, True),
        ("conv3", 96, 2, True), ("conv4", 128, 2, True), ("conv5", 128, 2, True)]
# feature map -> (min_size, max_size); every head has aspect ratio 2 (flipped): 4 priors
HEADS = [("conv3", 16, 32), ("conv4", 32, 56), ("conv5", 56, 88)]
PRIORS_PER_CELL = 4


def conv(name: str, bottom: str, out: int, k: int, stride: int = 1, group: int = 1,
         bias: bool = False) -> str:
    pad = k // 2
    params = 'param { lr_mult: 1 decay_mult: 1 }' + (' param { lr_mult: 2 decay_mult: 0 }' if bias else '')
    extra = f" group: {group}" if group > 1 else ""
    bias_text = ('bias_term: true bias_filler { type: "constant" value: 0 }' if bias
                 else "bias_term: false")
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" {params}\n'
            f'  convolution_param {{ num_output: {out} kernel_size: {k} pad: {pad} stride: {stride}'
            f'{extra} {bias_text} weight_filler {{ type: "msra" }} }} }}\n')


def bn_relu(name: str) -> str:
    return (f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
            f'param {{ lr_mult: 0 }} param {{ lr_mult: 0 }} param {{ lr_mult: 0 }} }}\n'
            f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}" '
            f'scale_param {{ bias_term: true }} }}\n'
            f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


def body() -> str:
    text, bottom, channels = "", "data", 3
    for name, out, stride, separable in BODY:
        if separable:
            text += conv(f"{name}/dw", bottom, channels, 3, stride, group=channels) + bn_relu(f"{name}/dw")
            text += conv(name, f"{name}/dw", out, 1) + bn_relu(name)
        else:
            text += conv(name, bottom, out, 3, stride) + bn_relu(name)
        bottom, channels = name, out
    return text


def heads() -> str:
    text = ""
    for feature, lo, hi in HEADS:
        for kind, per in (("loc", 4), ("conf", NUM_CLASSES)):
            head = f"{feature}_mbox_{kind}"
            text += conv(head, feature, PRIORS_PER_CELL * per, 3, bias=True)
            text += (f'layer {{ name: "{head}_perm" type: "Permute" bottom: "{head}" '
                     f'top: "{head}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                     f'layer {{ name: "{head}_flat" type: "Flatten" bottom: "{head}_perm" '
                     f'top: "{head}_flat" flatten_param {{ axis: 1 }} }}\n')
        text += (f'layer {{ name: "{feature}_mbox_priorbox" type: "PriorBox" bottom: "{feature}" '
                 f'bottom: "data" top: "{feature}_mbox_priorbox" prior_box_param {{ min_size: {lo} '
                 f'max_size: {hi} aspect_ratio: 2 flip: true clip: false variance: 0.1 '
                 f'variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }} }}\n')
    for kind, axis in (("loc", 1), ("conf", 1), ("priorbox", 2)):
        suffix = "" if kind == "priorbox" else "_flat"
        bottoms = " ".join(f'bottom: "{f}_mbox_{kind}{suffix}"' for f, _, _ in HEADS)
        text += (f'layer {{ name: "mbox_{kind}" type: "Concat" {bottoms} top: "mbox_{kind}" '
                 f'concat_param {{ axis: {axis} }} }}\n')
    return text


def data_layer(source: str, batch: int, train: bool) -> str:
    augment = ("mirror: true\n    distort_param { brightness_prob: 0.5 brightness_delta: 24 "
               "contrast_prob: 0.5 contrast_lower: 0.7 contrast_upper: 1.3 }\n"
               "    expand_param { prob: 0.3 max_expand_ratio: 1.5 }\n"
               "    emit_constraint { emit_type: CENTER }\n    ") if train else ""
    samplers = ("annotated_data_param {\n"
                "    batch_sampler { max_sample: 1 max_trials: 1 }\n"
                "    batch_sampler { sampler { min_scale: 0.5 max_scale: 1 min_aspect_ratio: 0.7 "
                "max_aspect_ratio: 1.4 } sample_constraint { min_jaccard_overlap: 0.5 } "
                "max_sample: 1 max_trials: 50 }\n"
                "    label_map_file: \"labelmap.prototxt\" }\n") if train else \
        '  annotated_data_param { label_map_file: "labelmap.prototxt" }\n'
    return (f'layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"\n'
            f'  transform_param {{ {augment}scale: 0.007843 mean_value: 127.5 mean_value: 127.5 '
            f'mean_value: 127.5\n'
            f'    resize_param {{ resize_mode: WARP height: {SIZE} width: {SIZE} interp_mode: LINEAR }} }}\n'
            f'  data_param {{ source: "{source}" batch_size: {batch} }}\n{samplers}}}\n')


def detection_output() -> str:
    return (f'layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" '
            f'top: "mbox_conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 dim: {NUM_CLASSES} }} }} }}\n'
            f'layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" '
            f'top: "mbox_conf_softmax" softmax_param {{ axis: 2 }} }}\n'
            f'layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" '
            f'top: "mbox_conf_flatten" flatten_param {{ axis: 1 }} }}\n'
            f'layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
            f'bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"\n'
            f'  detection_output_param {{ num_classes: {NUM_CLASSES} share_location: true '
            f'background_label_id: 0 nms_param {{ nms_threshold: 0.45 top_k: 100 }} '
            f'code_type: CENTER_SIZE keep_top_k: 50 confidence_threshold: 0.01 }} }}\n')


def main() -> None:
    loss = (f'layer {{ name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" '
            f'bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"\n'
            f'  propagate_down: true propagate_down: true propagate_down: false propagate_down: false\n'
            f'  loss_param {{ normalization: VALID }}\n'
            f'  multibox_loss_param {{ loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 '
            f'num_classes: {NUM_CLASSES} share_location: true match_type: PER_PREDICTION '
            f'overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0 '
            f'use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE '
            f'mining_type: MAX_NEGATIVE }} }}\n')
    evaluate = (f'layer {{ name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" '
                f'bottom: "label" top: "detection_eval"\n'
                f'  detection_evaluate_param {{ num_classes: {NUM_CLASSES} background_label_id: 0 '
                f'overlap_threshold: 0.5 evaluate_difficult_gt: false }} }}\n')
    deploy_input = (f'layer {{ name: "input" type: "Input" top: "data" '
                    f'input_param {{ shape {{ dim: 1 dim: 3 dim: {SIZE} dim: {SIZE} }} }} }}\n')
    nets = {"train.prototxt": data_layer("data/train_parquet", 16, True) + body() + heads() + loss,
            "test.prototxt": data_layer("data/test_parquet", 20, False) + body() + heads()
            + detection_output() + evaluate,
            "deploy.prototxt": deploy_input + body() + heads() + detection_output()}
    for name, text in nets.items():
        with open(os.path.join(HERE, name), "w") as fh:
            fh.write(f'name: "ShapesMobileNetSSD"\n{text}')


if __name__ == "__main__":
    main()
