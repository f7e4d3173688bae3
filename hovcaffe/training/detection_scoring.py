"""SSD's detection test pass (`Solver::TestDetection`, solver `eval_type: "detection"`): mAP.

Every output of the test net must be a DetectionEvaluate table (rows [image, label, score, tp,
fp]; see `hovcaffe.layers.detection_eval`). Over the pass the rows are collected per output:
rows with image -1 add to a class's positives; the others are (score, tp, fp) of one
detection, except tp = fp = 0 (a hit on an ignored difficult box), which is dropped. Then per
output, for each class with a positives entry, the average precision with the solver's
`ap_version` (`ComputeAP` in SSD's `bbox_util.cpp`); a class with no detections counts 0. The
output's score is the mean over those classes.

Across ranks the collected rows are gathered, not averaged: average precision of the union is
not the mean of the ranks' average precisions.

The AP arithmetic runs in float32 in SSD's order, so the numbers are the fork's:

* precision and recall after each detection, sorted by score (stable: equal scores keep their
  order of arrival);
* `11point` (VOC2007): the mean over recall levels 0, 0.1, ..., 1 of the best precision at a
  recall >= the level;
* `MaxIntegral` (VOC2012 / ILSVRC): the area under the precision envelope (each precision
  replaced by the best one at a higher or equal recall);
* `Integral`: the sum of precision x recall step over the detections.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import numpy as np
import torch

from hovcaffe.training.scoring import batch_rows

f32 = np.float32
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
_EPS = f32(1e-6)


def average_precision(scores: Iterable[float], tp: Iterable[int], num_pos: int,
                      version: str) -> float:
    """SSD's ComputeAP for one class: detections (score, 1 for a true positive else 0)."""
    if version not in AP_VERSIONS:
        raise ValueError(f"unknown ap_version {version!r}; SSD knows {', '.join(AP_VERSIONS)}")
    scores = np.asarray(list(scores), dtype=f32)
    hits = np.asarray(list(tp), dtype=np.int64)
    if len(scores) == 0 or num_pos == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp_cum = np.cumsum(hits[order])
    fp_cum = np.cumsum(1 - hits[order])
    prec = (tp_cum.astype(f32) / (tp_cum + fp_cum).astype(f32)).astype(f32)
    rec = (tp_cum.astype(f32) / f32(num_pos)).astype(f32)
    ap = f32(0)
    if version == "11point":
        best = [f32(0)] * 11
        start = len(rec) - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if rec[i] < j / 10.0:
                    start = i
                    if j > 0:
                        best[j - 1] = best[j]
                    break
                best[j] = max(best[j], prec[i])
        for j in range(10, -1, -1):
            ap = f32(ap + f32(best[j] / f32(11)))
    elif version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(len(rec) - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            step = abs(f32(cur_rec - rec[i]))
            if step > _EPS:
                ap = f32(ap + f32(cur_prec * step))
            cur_rec = rec[i]
        ap = f32(ap + f32(cur_rec * cur_prec))
    else:
        prev = f32(0)
        for i in range(len(rec)):
            step = abs(f32(rec[i] - prev))
            if step > _EPS:
                ap = f32(ap + f32(prec[i] * step))
            prev = rec[i]
    return float(ap)


class DetectionTally:
    """The rows of one test pass for one output, by class (picklable, so ranks can gather it)."""

    def __init__(self) -> None:
        self.positives: dict[int, int] = defaultdict(int)
        self.detections: dict[int, list[tuple[float, int]]] = defaultdict(list)

    def add(self, table: np.ndarray) -> None:
        """Add one forward's (rows, 5) DetectionEvaluate table."""
        table = np.asarray(table, dtype=f32).reshape(-1, 5)
        for image, label, score, tp, fp in table:
            if int(image) == -1:
                self.positives[int(label)] += int(score)
            elif int(tp) or int(fp):
                self.detections[int(label)].append((float(score), int(tp)))

    def merge(self, other: "DetectionTally") -> None:
        for label, n in other.positives.items():
            self.positives[label] += n
        for label, dets in other.detections.items():
            self.detections[label].extend(dets)

    def class_aps(self, version: str) -> dict[int, float]:
        return {label: average_precision([s for s, _ in self.detections.get(label, [])],
                                         [t for _, t in self.detections.get(label, [])],
                                         n, version)
                for label, n in sorted(self.positives.items())}

    def mean_ap(self, version: str) -> float:
        aps = self.class_aps(version)
        return float(f32(sum(aps.values(), f32(0)) / f32(len(aps)))) if aps else 0.0


def _is_ground_truth(t: torch.Tensor) -> bool:
    """SSD's (1, 1, G, 8) ground-truth blob, whose rows are boxes, not images."""
    return t.dim() == 4 and tuple(t.shape[:2]) == (1, 1) and t.shape[3] == 8


def image_rows(batch: dict[str, torch.Tensor]) -> int:
    """Images in a batch: the first dimension of its tensors other than the ground truth."""
    images = {name: t for name, t in batch.items() if t.dim() and not _is_ground_truth(t)}
    return batch_rows(images) if images else 1


def cut_batch(batch: dict[str, torch.Tensor], take: int) -> dict[str, torch.Tensor]:
    """The first `take` images of a batch, with the ground-truth rows of those images."""
    out = {}
    for name, t in batch.items():
        if _is_ground_truth(t):
            rows = t.reshape(-1, 8)
            kept = rows[(rows[:, 0] >= 0) & (rows[:, 0] < take)]
            out[name] = kept.view(1, 1, -1, 8) if len(kept) else torch.full((1, 1, 1, 8), -1.0)
        else:
            out[name] = t[:take]
    return out


@torch.no_grad()
def collect_detections(net, feeder, *, iterations: int | None = None, samples: int | None = None,
                       compute_loss: bool = False,
                       should_stop: Callable[[], bool] = lambda: False
                       ) -> tuple[dict[str, DetectionTally], float, int]:
    """One test pass: `iterations` batches (Caffe's) or the first `samples` rows (each once).

    Returns ({output: tally}, summed objective, batches run). Every output must be a
    DetectionEvaluate table of width 5.
    """
    tallies = {name: DetectionTally() for name in net.output_names}
    loss, batches, done = 0.0, 0, 0
    if samples is not None:
        feeder.rewind()
    while True:
        if should_stop():
            break
        if iterations is not None and batches >= iterations:
            break
        if samples is not None and done >= samples and batches:
            break
        batch = feeder.next_batch()
        if samples is not None:
            rows = image_rows(batch)
            take = min(rows, samples - done)
            if take <= 0:
                break
            if take < rows:
                batch = cut_batch(batch, take)
            done += take
        blobs = net(**batch)
        batches += 1
        if compute_loss:
            loss += float(net.objective(blobs).item())
        for name in net.output_names:
            table = blobs[name].detach().float().cpu().numpy()
            if table.ndim < 2 or table.shape[-1] != 5:
                raise ValueError(f"eval_type \"detection\": test net output {name!r} has shape "
                                 f"{list(table.shape)}; every output must be a DetectionEvaluate "
                                 f"table (1, 1, rows, 5)")
            tallies[name].add(table)
    return tallies, loss, batches


def detection_outputs(net) -> list[str]:
    """The net outputs a DetectionEvaluate layer produces: a net with any is scored by mAP
    (`hovcaffe test`; training follows the solver's `eval_type` instead)."""
    tops = {top for layer in net.net_param.layer if layer.type == "DetectionEvaluate"
            for top in layer.top}
    return [name for name in net.output_names if name in tops]


def detection_test(net, feeder, test_iter: int, samples: int | None, *, ap_version: str,
                   gather: Callable[[object], list], compute_loss: bool = False,
                   should_stop: Callable[[], bool] = lambda: False
                   ) -> tuple[dict[str, np.ndarray], float | None]:
    """The `eval_type: "detection"` pass: ({output: [mAP]}, mean objective or None).

    `samples` as in `scoring.score_samples` (None: Caffe's `test_iter` batches); `gather` returns
    every rank's object (`TrainHooks.gather_objects`), so the mAP is that of all ranks' rows.
    """
    if ap_version not in AP_VERSIONS:
        raise ValueError(f"solver ap_version {ap_version!r} is not one of {', '.join(AP_VERSIONS)}")
    tallies, loss, batches = collect_detections(
        net, feeder, iterations=test_iter if samples is None else None, samples=samples,
        compute_loss=compute_loss, should_stop=should_stop)
    merged = {name: DetectionTally() for name in tallies}
    for rank_tallies in gather(tallies):
        for name, tally in rank_tallies.items():
            merged[name].merge(tally)
    means = {name: np.array([t.mean_ap(ap_version)], dtype=f32) for name, t in merged.items()}
    return means, (float(f32(loss / max(1, batches))) if compute_loss else None)
