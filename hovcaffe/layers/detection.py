"""SSD's detection layers (weiliu89/caffe, branch ssd): PriorBox and DetectionOutput.

PriorBox (`prior_box_layer.cpp`): for a feature map of H x W and an image of img_h x img_w
(img_size / img_h / img_w, else the second bottom's size), the top is (1, 2, H*W*P*4): the
prior corners, normalized by the image size, then one variance per coordinate. Step defaults
to image / feature size, offset to 0.5; P = len(min_size) * (1 + ratios != 1 after flipping)
+ len(max_size). The values depend only on shapes, so the layer is a constant to exporters.

DetectionOutput (`detection_output_layer.cpp`, CPU path): decode every prior (code_type,
variance_encoded_in_target; no clipping), then per image and per non-background class: keep
scores > confidence_threshold, best first, at most nms_param.top_k, greedy NMS with
nms_threshold and eta; then keep the keep_top_k best over all classes. The top is
(1, 1, kept, 7) rows [image, label, score, xmin, ymin, xmax, ymax], images in order, labels
ascending, best first within a label. When nothing is kept the top is (1, 1, N, 7) of -1 with
the image index in column 0 (SSD's convention; OpenCV returns rows of zeros instead).
The number of rows depends on the data, so the layer does not export: export its bottoms and
run the post-process (`hovcaffe.layers.detection.detect`) on the exported heads' outputs.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from hovcaffe.errors import UserInputError
from hovcaffe.layers import boxes
from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.common import Shape, count, eager, shape_text
from hovcaffe.layers.registry import register_layer

log = logging.getLogger(__name__)


def export_refusal(layer: CaffeLayer, advice: str) -> UserInputError:
    """The error a data-dependent layer raises while torch traces it for export."""
    return UserInputError(f"{layer.where()} cannot be exported: what it computes depends on the "
                          f"values of its inputs, which a traced graph would freeze; {advice}")


@register_layer("PriorBox")
class PriorBox(CaffeLayer):
    """SSD's prior (default) boxes for one feature map; see the module docstring."""

    has_backward = False   # SSD's Backward_cpu does nothing

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.prior_box_param
        self.expect_bottoms(bottom_shapes, 2)
        self.min_sizes = [float(s) for s in p.min_size]
        self.max_sizes = [float(s) for s in p.max_size]
        if not self.min_sizes or any(s <= 0 for s in self.min_sizes):
            raise self.param_error("prior_box_param needs min_size values > 0")
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.param_error(f"{len(self.max_sizes)} max_size values for "
                                       f"{len(self.min_sizes)} min_size values; give one per min_size")
            bad = [(lo, hi) for lo, hi in zip(self.min_sizes, self.max_sizes) if hi <= lo]
            if bad:
                raise self.param_error(f"max_size must be greater than min_size, got {bad[0]}")
        ratios = boxes.expand_aspect_ratios(p.aspect_ratio, p.flip)
        self.sizes = boxes.prior_box_sizes(self.min_sizes, self.max_sizes, ratios)
        self.clip = bool(p.clip)
        self.variances = [float(v) for v in p.variance] or [0.1]
        if len(self.variances) not in (1, 4) or any(v <= 0 for v in self.variances):
            raise self.param_error(f"prior_box_param needs 1 or 4 variance values > 0, got "
                                   f"{self.variances}")
        self.img_hw = self._pair(p, "img_size", "img_h", "img_w", int)
        self.step_hw = self._pair(p, "step", "step_h", "step_w", float)
        self.offset = float(p.offset)
        self.output_shapes(bottom_shapes)

    def _pair(self, p, both: str, h: str, w: str, kind):
        """(h, w) from `both` or from the `h`/`w` pair (0 = take it from the shapes)."""
        if p.HasField(h) or p.HasField(w):
            if p.HasField(both):
                raise self.param_error(f"give {both} or {h}/{w}, not both")
            return kind(getattr(p, h)), kind(getattr(p, w))
        return kind(getattr(p, both)), kind(getattr(p, both))

    @property
    def num_priors(self) -> int:
        return len(self.sizes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        for i, s in enumerate(bottom_shapes):
            if len(s) != 4:
                raise self.shape_error(f"bottom {i} must be 4-D (N, C, H, W), got {shape_text(s)}")
        h, w = bottom_shapes[0][2:]
        return [(1, 2, h * w * self.num_priors * 4)]

    def priors(self, layer_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
        """The (2, H*W*P*4) top for a feature map and an image size (the layer's own win)."""
        img_h = self.img_hw[0] or image_hw[0]
        img_w = self.img_hw[1] or image_hw[1]
        f32 = np.float32
        step_h = self.step_hw[0] or float(f32(img_h) / f32(layer_hw[0]))
        step_w = self.step_hw[1] or float(f32(img_w) / f32(layer_hw[1]))
        return boxes.prior_boxes(layer_hw, (img_h, img_w), (step_h, step_w), self.offset,
                                 self.sizes, self.clip, self.variances)

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        top = self.priors(tuple(feature.shape[2:]), tuple(image.shape[2:]))
        return [torch.from_numpy(top).to(feature.device, feature.dtype).unsqueeze(0)]


def detect(loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor, *, num_classes: int,
           share_location: bool = True, background_label_id: int = 0,
           code_type: int = boxes.CORNER, variance_encoded_in_target: bool = False,
           confidence_threshold: float | None = None, nms_threshold: float = 0.3,
           top_k: int = -1, eta: float = 1.0, keep_top_k: int = -1) -> torch.Tensor:
    """SSD's DetectionOutput on (N, P*L*4) locations, (N, P*classes) scores, (1, 2, P*4) priors.

    Returns the (1, 1, rows, 7) top described in the module docstring. L is 1 with
    `share_location`, else num_classes. This is also the post-process to run on the outputs of
    an exported SSD net's heads.
    """
    n = loc.shape[0]
    num_priors = prior[0].numel() // 8
    num_loc = 1 if share_location else num_classes
    pri = prior[0].reshape(2, num_priors, 4).to(torch.float32)
    decoded = boxes.decode_boxes(loc.detach().float().reshape(n, num_priors, num_loc, 4).transpose(1, 2),
                                 pri[0], pri[1], code_type, variance_encoded_in_target)
    decoded_np = decoded.cpu().numpy()                                    # (N, L, P, 4)
    scores_np = conf.detach().float().reshape(n, num_priors, num_classes).cpu().numpy()
    threshold = float(np.finfo(np.float32).min) if confidence_threshold is None else confidence_threshold
    rows: list[list[float]] = []
    for i in range(n):
        kept: dict[int, list[int]] = {}
        for c in range(num_classes):
            if c == background_label_id:
                continue
            bxs = decoded_np[i, 0 if share_location else c]
            order = boxes.top_scores(scores_np[i, :, c], threshold, top_k)
            kept[c] = boxes.greedy_nms(bxs, order, nms_threshold, eta=eta)
        total = sum(len(v) for v in kept.values())
        if keep_top_k > -1 and total > keep_top_k:
            labels = np.concatenate([np.full(len(js), c) for c, js in kept.items()])
            index = np.concatenate([np.asarray(js, np.int64) for js in kept.values()])
            # std::sort by score alone: equal scores keep no promised order; stable here.
            best = np.argsort(-scores_np[i, index, labels], kind="stable")[:keep_top_k]
            kept = {}
            for c, j in zip(labels[best].tolist(), index[best].tolist()):
                kept.setdefault(c, []).append(j)
        for c in sorted(kept):
            bxs = decoded_np[i, 0 if share_location else c]
            for j in kept[c]:
                rows.append([i, c, float(scores_np[i, j, c]), *bxs[j].tolist()])
    if not rows:
        empty = np.full((n, 7), -1, dtype=np.float32)
        empty[:, 0] = np.arange(n)
        return torch.from_numpy(empty).view(1, 1, n, 7).to(loc.device)
    return torch.tensor(rows, dtype=torch.float32, device=loc.device).view(1, 1, len(rows), 7)


def check_head_shapes(layer: CaffeLayer, loc: Shape, conf: Shape, prior: Shape, classes: int,
                      num_loc: int) -> int:
    """Check an SSD net's loc / conf / PriorBox bottoms against each other; returns the priors."""
    num_priors = count(prior, 2) // 4 if len(prior) >= 3 else -1
    if num_priors <= 0 or prior[1] != 2:
        raise layer.shape_error(f"bottom 2 must be PriorBox output (1, 2, P*4), got "
                                f"{shape_text(prior)}")
    if count(loc, 1) != num_priors * num_loc * 4:
        raise layer.shape_error(f"{num_priors} priors need {num_priors * num_loc * 4} location "
                                f"values per image; bottom 0 has shape {shape_text(loc)}")
    if count(conf, 1) != num_priors * classes:
        raise layer.shape_error(f"{num_priors} priors x {classes} classes need "
                                f"{num_priors * classes} scores per image; bottom 1 has shape "
                                f"{shape_text(conf)}")
    if loc[0] != conf[0]:
        raise layer.shape_error(f"bottoms 0 and 1 differ in batch size: {shape_text(loc)} and "
                                f"{shape_text(conf)}")
    return num_priors


@register_layer("DetectionOutput")
class DetectionOutput(CaffeLayer):
    """SSD's decode + per-class NMS + keep_top_k; see the module docstring."""

    has_backward = False   # SSD: Backward_cpu is NOT_IMPLEMENTED

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.detection_output_param
        self.expect_bottoms(bottom_shapes, 3)
        if not p.HasField("num_classes") or p.num_classes <= 0:
            raise self.param_error("detection_output_param needs num_classes")
        nms = p.nms_param
        if nms.nms_threshold < 0:
            raise self.param_error(f"nms_threshold must be >= 0, got {nms.nms_threshold}")
        if not 0 < nms.eta <= 1:
            raise self.param_error(f"nms_param.eta must be in (0, 1], got {nms.eta}")
        if p.code_type not in boxes.CODE_TYPE_NAMES:
            raise self.param_error(f"unknown code_type {p.code_type}")
        self.options = dict(
            num_classes=int(p.num_classes), share_location=bool(p.share_location),
            background_label_id=int(p.background_label_id), code_type=int(p.code_type),
            variance_encoded_in_target=bool(p.variance_encoded_in_target),
            confidence_threshold=float(p.confidence_threshold) if p.HasField("confidence_threshold")
            else None,
            nms_threshold=float(nms.nms_threshold), top_k=int(nms.top_k) if nms.HasField("top_k") else -1,
            eta=float(nms.eta), keep_top_k=int(p.keep_top_k))
        if p.save_output_param.output_directory:
            # SSD writes VOC/COCO result files there; hovcaffe returns the rows only.
            log.warning("%s: save_output_param is ignored (no result files are written to %s)",
                        self.where(), p.save_output_param.output_directory)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        loc, conf, prior = bottom_shapes
        classes = self.options["num_classes"]
        check_head_shapes(self, loc, conf, prior, classes,
                          1 if self.options["share_location"] else classes)
        # Rows are only known after NMS; Caffe reshapes to a placeholder of one row as well.
        return [(1, 1, 1, 7)]

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> list[torch.Tensor]:
        if not eager():
            raise export_refusal(self, f"export the net's heads instead (-outputs "
                                       f"{','.join(self.param.bottom)}) and apply the post-process "
                                       f"hovcaffe.layers.detection.detect to their outputs")
        return [detect(loc, conf, prior, **self.options)]
