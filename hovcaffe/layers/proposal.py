"""Faster R-CNN's region proposals as a built-in layer.

py-faster-rcnn computes proposals in a Python layer (`rpn.proposal_layer.ProposalLayer`,
settings in `python_param.param_str`); OpenCV's dnn names the same computation `Proposal` with a
`proposal_param`. Both build here to one layer, so those nets run without importing anyone's
code (the mapping from Python modules is `hovcaffe.layers.python_layers`).

Forward, for one image (py-faster-rcnn supports batches of one): anchors from
`generate_anchors(base_size, ratios, scales)` shifted by feat_stride over the H x W map (index
(y * W + x) * A + a); foreground scores are channels A..2A-1 of bottom 0; the deltas of bottom 1
are applied with `bbox_transform_inv` (pixel boxes); boxes are clipped to the image
(im_info = height, width, scale), those narrower or lower than min_size * scale dropped, the
pre_nms_top_n best kept, NMS at nms_thresh, then the post_nms_top_n best. Top 0 is (R, 5) rows
(0, x1, y1, x2, y2); an optional top 1 holds their scores (R, 1).

Settings: py-faster-rcnn's cfg per phase (TRAIN: 12000 / 2000, TEST: 6000 / 300; NMS 0.7,
min size 16), anchors of base 16 with ratios 0.5, 1, 2 and scales from param_str (default 8, 16,
32); OpenCV's proposal_param carries the same numbers as fields with the TEST defaults.
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.layers import boxes
from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.common import Shape, eager, shape_text
from hovcaffe.layers.detection import export_refusal
from hovcaffe.layers.registry import register_layer


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
    feat_stride: int = 16
    base_size: int = 16
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    min_size: float = 16.0
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7


# py-faster-rcnn's lib/fast_rcnn/config.py: __C.TRAIN.RPN_* and __C.TEST.RPN_*.
PY_FASTER_RCNN_CFG = {
    caffe_pb2.TRAIN: dict(pre_nms_top_n=12000, post_nms_top_n=2000, nms_thresh=0.7, min_size=16.0),
    caffe_pb2.TEST: dict(pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7, min_size=16.0),
}
# The param_str keys a ProposalLayer accepts, with the settings field each sets.
PARAM_STR_KEYS = {"feat_stride": "feat_stride", "scales": "scales", "ratios": "ratios",
                  "base_size": "base_size"}


def parse_param_str(text: str) -> dict[str, Any]:
    """A py-faster-rcnn `param_str` ("'feat_stride': 16, 'scales': [8, 16]") as a dict.

    The forks hand it to `yaml.load`; here it is parsed as YAML with the safe loader (plain
    data, no object construction), falling back to Python literals, never evaluated as code.

    Raises:
        ValueError: text that is neither, or not a mapping.
    """
    text = text.strip()
    if not text:
        return {}
    try:
        import yaml
        value = yaml.safe_load(text)
    except Exception:  # yaml missing or a YAML error: try the literal form below
        value = None
    if not isinstance(value, dict):
        try:
            value = ast.literal_eval(text if text.startswith("{") else "{" + text + "}")
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"param_str {text!r} is not a YAML mapping: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"param_str {text!r} is not a mapping of settings")
    return value


def proposals(cls_prob: torch.Tensor, bbox_pred: torch.Tensor, im_info: torch.Tensor,
              s: ProposalSettings) -> tuple[np.ndarray, np.ndarray]:
    """(R, 4) float32 proposals and (R,) scores for one image (see the module docstring)."""
    base = boxes.anchors(s.base_size, s.ratios, s.scales)
    a = base.shape[0]
    _, _, h, w = cls_prob.shape
    scores = cls_prob[0, a:].detach().float().cpu().numpy().transpose(1, 2, 0).reshape(-1)
    deltas = bbox_pred[0].detach().float().cpu().numpy().transpose(1, 2, 0).reshape(-1, 4)
    info = im_info.detach().float().cpu().numpy().reshape(-1)
    sx, sy = np.meshgrid(np.arange(w) * s.feat_stride, np.arange(h) * s.feat_stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    all_anchors = (base[None] + shifts[:, None]).reshape(-1, 4)
    props = boxes.apply_deltas_pixel(all_anchors, deltas)
    np.clip(props[:, 0::2], 0, info[1] - 1, out=props[:, 0::2])
    np.clip(props[:, 1::2], 0, info[0] - 1, out=props[:, 1::2])
    min_size = np.float32(s.min_size * info[2])
    ws = props[:, 2] - props[:, 0] + 1
    hs = props[:, 3] - props[:, 1] + 1
    keep = np.nonzero((ws >= min_size) & (hs >= min_size))[0]
    props, scores = props[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    if s.pre_nms_top_n > 0:
        order = order[: s.pre_nms_top_n]
    kept = boxes.greedy_nms(props, order, s.nms_thresh, pixel=True)
    if s.post_nms_top_n > 0:
        kept = kept[: s.post_nms_top_n]
    return props[kept], scores[kept]


@register_layer("Proposal")
class Proposal(CaffeLayer):
    """Region proposals (py-faster-rcnn's ProposalLayer / OpenCV's Proposal)."""

    has_backward = False   # py-faster-rcnn's backward does nothing

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.settings = self._settings(param, phase)
        self.expect_bottoms(bottom_shapes, 3)
        self.expect_tops(1, 2)
        self.output_shapes(bottom_shapes)

    def _settings(self, param, phase: int) -> ProposalSettings:
        if param.type == "Python":
            try:
                given = parse_param_str(param.python_param.param_str)
            except ValueError as exc:
                raise self.param_error(str(exc)) from None
            unknown = sorted(set(given) - set(PARAM_STR_KEYS))
            if unknown:
                raise self.param_error(f"param_str sets {unknown}, which ProposalLayer does not "
                                       f"read; it takes {', '.join(PARAM_STR_KEYS)}")
            if "feat_stride" not in given:
                raise self.param_error("param_str must set 'feat_stride' (e.g. \"'feat_stride': 16\")")
            values = {PARAM_STR_KEYS[k]: v for k, v in given.items()}
            for key in ("scales", "ratios"):
                if key in values:
                    values[key] = tuple(float(v) for v in np.atleast_1d(values[key]))
            return ProposalSettings(**{**PY_FASTER_RCNN_CFG[phase], **values})
        p = param.proposal_param   # OpenCV's spelling; its defaults are the TEST cfg's
        return ProposalSettings(
            feat_stride=int(p.feat_stride), base_size=int(p.base_size),
            ratios=tuple(float(r) for r in p.ratio) or ProposalSettings.ratios,
            scales=tuple(float(r) for r in p.scale) or ProposalSettings.scales,
            min_size=float(p.min_size), pre_nms_top_n=int(p.pre_nms_topn),
            post_nms_top_n=int(p.post_nms_topn), nms_thresh=float(p.nms_thresh))

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        prob, deltas, info = bottom_shapes
        a = len(self.settings.ratios) * len(self.settings.scales)
        if len(prob) != 4 or prob[0] != 1 or prob[1] != 2 * a:
            raise self.shape_error(f"bottom 0 must be the (1, 2 x {a} anchors, H, W) object "
                                   f"probabilities of one image, got {shape_text(prob)}")
        if tuple(deltas) != (1, 4 * a, *prob[2:]):
            raise self.shape_error(f"bottom 1 must be the (1, {4 * a}, {prob[2]}, {prob[3]}) box "
                                   f"deltas, got {shape_text(deltas)}")
        if int(np.prod(info)) != 3:
            raise self.shape_error(f"bottom 2 must be im_info (height, width, scale), got "
                                   f"{shape_text(info)}")
        # The row count depends on the data; shapes show the most it can be.
        rows = self.settings.post_nms_top_n if self.settings.post_nms_top_n > 0 else \
            prob[2] * prob[3] * a
        return [(rows, 5), (rows, 1)][: len(self.param.top)]

    def forward(self, cls_prob: torch.Tensor, bbox_pred: torch.Tensor, im_info: torch.Tensor
                ) -> list[torch.Tensor]:
        if not eager():
            raise export_refusal(self, f"export the part of the net before it (-outputs "
                                       f"{','.join(self.param.bottom)})")
        props, scores = proposals(cls_prob, bbox_pred, im_info, self.settings)
        rois = np.concatenate([np.zeros((len(props), 1), np.float32), props], axis=1)
        out = [torch.from_numpy(rois).to(cls_prob.device, cls_prob.dtype)]
        if len(self.param.top) > 1:
            out.append(torch.from_numpy(scores.reshape(-1, 1)).to(cls_prob.device, cls_prob.dtype))
        return out
