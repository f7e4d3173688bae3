"""SSD's DetectionEvaluate (weiliu89/caffe, branch ssd: `detection_evaluate_layer.cpp`).

Bottoms: DetectionOutput's (1, 1, D, 7) rows [image, label, score, xmin, ymin, xmax, ymax] and
the (1, 1, G, 8) ground truth (see `box_matching`). The top is (1, 1, C' + D', 5) rows
[image, label, score, tp, fp]:

* first, for every class but the background, [-1, label, positives, -1, -1], where positives
  counts that class's ground truth in the batch (difficult boxes only with
  evaluate_difficult_gt);
* then every detection whose label is not -1, by image, by label, best score first: it is a
  true positive when its best-overlapping ground truth of its label and image overlaps
  >= overlap_threshold and was not taken by a better detection; a repeat hit or a poor overlap is
  a false positive; a hit on a difficult box with evaluate_difficult_gt false is [.., 0, 0]
  (neither; the solver skips it).

The solver's `eval_type: "detection"` test pass turns these rows into average precision
(`hovcaffe.training.detection_scoring`). Boxes are compared in normalized coordinates:
SSD's name_size_file (pixel-size comparison with +1 widths) is not read.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from hovcaffe.errors import HovcaffeError
from hovcaffe.layers import box_matching as bm
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import shape_text
from hovcaffe.layers.registry import register_layer

log = logging.getLogger(__name__)

ROW_WIDTH = 5   # [image, label, score, tp, fp]


def evaluate_detections(detections: np.ndarray, truth: dict[int, bm.GroundTruth], *,
                        num_classes: int, background_label_id: int, overlap_threshold: float,
                        evaluate_difficult_gt: bool) -> np.ndarray:
    """The (rows, 5) float32 table described in the module docstring."""
    rows: list[list[float]] = []
    for c in range(num_classes):
        if c == background_label_id:
            continue
        positives = sum(int(((g.labels == c) & (evaluate_difficult_gt | ~g.difficult)).sum())
                        for g in truth.values())
        rows.append([-1, c, positives, -1, -1])
    dets = detections[detections[:, 0] != -1]
    thr = np.float32(overlap_threshold)
    for image in sorted({int(i) for i in dets[:, 0]}):
        mine = dets[dets[:, 0] == image]
        gt = truth.get(image)
        for label in sorted({int(c) for c in mine[:, 1]} - {-1}):
            boxes_of = mine[mine[:, 1] == label]
            # Best first; equal scores keep their row order (SSD's std::sort leaves them open).
            boxes_of = boxes_of[np.argsort(-boxes_of[:, 2], kind="stable")]
            same = (gt.labels == label) if gt is not None else np.zeros(0, dtype=bool)
            if not same.any():
                rows.extend([image, label, float(d[2]), 0, 1] for d in boxes_of)
                continue
            gt_boxes, gt_difficult = gt.boxes[same], gt.difficult[same]
            taken = np.zeros(len(gt_boxes), dtype=bool)
            ov = bm.overlap_matrix(boxes_of[:, 3:7].astype(np.float32), gt_boxes)
            for d, row_ov in zip(boxes_of, ov):
                j = int(np.argmax(row_ov))      # first of equal overlaps, as SSD's strict >
                tp, fp = 0, 1
                if row_ov[j] >= thr:
                    if not evaluate_difficult_gt and gt_difficult[j]:
                        tp, fp = 0, 0
                    elif not taken[j]:
                        tp, fp = 1, 0
                        taken[j] = True
                rows.append([image, label, float(d[2]), tp, fp])
    return np.asarray(rows, dtype=np.float32).reshape(-1, ROW_WIDTH)


@register_layer("DetectionEvaluate")
class DetectionEvaluate(CaffeLayer):
    """Per-detection true/false positive rows and per-class positives; see the module doc."""

    has_backward = False   # SSD: Backward_cpu is NOT_IMPLEMENTED

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2)
        self.expect_tops(1)
        p = param.detection_evaluate_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.param_error("detection_evaluate_param needs num_classes")
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        self.overlap_threshold = float(p.overlap_threshold)
        if self.overlap_threshold <= 0:
            raise self.param_error(f"overlap_threshold must be > 0, got {self.overlap_threshold}")
        self.evaluate_difficult_gt = bool(p.evaluate_difficult_gt)
        if p.name_size_file:
            log.warning("%s: name_size_file %s is ignored; boxes are compared in normalized "
                        "coordinates", self.where(), p.name_size_file)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        det, gt = bottom_shapes
        if len(det) != 4 or det[0] != 1 or det[1] != 1 or det[3] != 7:
            raise self.shape_error(f"bottom 0 must be DetectionOutput rows (1, 1, D, 7), got "
                                   f"{shape_text(det)}")
        if len(gt) != 4 or gt[0] != 1 or gt[1] != 1 or gt[3] != bm.GT_WIDTH:
            raise self.shape_error(f"bottom 1 must be ground truth (1, 1, G, 8), got "
                                   f"{shape_text(gt)}")
        # Rows depend on the detections; one per class is known before any data is seen.
        classes = self.num_classes - (1 if self.background < self.num_classes else 0)
        return [(1, 1, classes, ROW_WIDTH)]

    def forward(self, det: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        try:
            truth = bm.ground_truth(gt, background_label_id=self.background,
                                    use_difficult_gt=True, where=self.where())
        except ValueError as e:
            raise HovcaffeError(str(e)) from None
        rows = det.detach().to(torch.float32).reshape(-1, 7).cpu().numpy()
        if (rows[:, 0] != -1).any() and (rows[rows[:, 0] != -1, 1] == self.background).any():
            raise HovcaffeError(f"{self.where()}: a detection carries the background label "
                                f"{self.background}")
        table = evaluate_detections(rows, truth, num_classes=self.num_classes,
                                    background_label_id=self.background,
                                    overlap_threshold=self.overlap_threshold,
                                    evaluate_difficult_gt=self.evaluate_difficult_gt)
        return [torch.from_numpy(table).to(det.device).view(1, 1, -1, ROW_WIDTH)]
