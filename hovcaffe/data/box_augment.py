"""SSD's image-and-box augmentation (weiliu89/caffe, branch ssd: `data_transformer.cpp`,
`im_transforms.cpp`, `sampler.cpp`), on one decoded H x W x C uint8 BGR image and its boxes.

Boxes are (K, 4) float32 [xmin, ymin, xmax, ymax] in [0, 1] image units; labels and difficult
flags travel with them as (K,) arrays. Every random draw comes from the `np.random.Generator`
passed in, so a feed that seeds it per (seed, rank, phase, batch) replays exactly. The draws are
SSD's (which ranges, in which order of steps) but not its random stream.

* `distort`: with probability 1/2 brightness, contrast, saturation, hue, channel order, else
  brightness, saturation, hue, contrast, channel order; each step with its own probability.
* `expand`: with probability `prob`, a canvas `ratio` ~ U(1, max_expand_ratio) times larger,
  filled with the mean values, the image at a random whole-pixel offset.
* `sample_crops`: per batch_sampler, up to max_trials draws of scale ~ U(min, max) and aspect
  ~ U(min, max) clamped to [scale^2, 1/scale^2], kept when the sample_constraint holds for some
  box (SSD's test, including its way of carrying `found` from one box to the next), at most
  max_sample per sampler; the layer then crops to one of all kept samples at random.
* `crop` / `project`: boxes re-expressed in a crop's frame, clipped; dropped when the
  emit_constraint fails (CENTER: the box centre inside the crop; MIN_OVERLAP: more than
  emit_overlap of the box inside) or nothing is left.
* `resize`: WARP (boxes unchanged) or FIT_LARGE_SIZE_AND_PAD (aspect kept, centred, padded with
  pad_value; boxes follow), interpolation drawn from interp_mode.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

f32 = np.float32
UNIT = np.array([0, 0, 1, 1], dtype=f32)
CENTER, MIN_OVERLAP = 0, 1                         # EmitConstraint.EmitType
WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD = 1, 2, 3
_INTERP = {1: "INTER_LINEAR", 2: "INTER_AREA", 3: "INTER_NEAREST", 4: "INTER_CUBIC",
           5: "INTER_LANCZOS4"}


def _size(b: np.ndarray) -> float:
    w, h = b[2] - b[0], b[3] - b[1]
    return 0.0 if w < 0 or h < 0 else float(f32(w) * f32(h))


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return np.zeros(4, dtype=f32)
    return np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])], dtype=f32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = _intersection(a, b)
    w, h = inter[2] - inter[0], inter[3] - inter[1]
    if w <= 0 or h <= 0:
        return 0.0
    i = float(f32(w) * f32(h))
    return i / (_size(a) + _size(b) - i)


def coverage(a: np.ndarray, b: np.ndarray) -> float:
    """The share of box `a` inside box `b` (SSD's BBoxCoverage(a, b))."""
    inter = _size(_intersection(a, b))
    return inter / _size(a) if inter > 0 else 0.0


def _fill(values: Sequence[float], channels: int) -> np.ndarray:
    """A pixel of `values` (one per channel, or one for all; none: 0) as uint8."""
    values = list(values) or [0.0]
    if len(values) not in (1, channels):
        raise ValueError(f"{len(values)} fill values for {channels} channels; give 1 or {channels}")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,)).astype(np.uint8)


# ------------------------------------------------------------------------ photometric

def _hsv_channel(img: np.ndarray, channel: int, alpha: float, beta: float) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., channel] = np.clip(np.rint(hsv[..., channel].astype(np.float32) * alpha + beta), 0, 255)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _affine(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(np.rint(img.astype(np.float32) * alpha + beta), 0, 255).astype(np.uint8)


def distort(img: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    """SSD's ApplyDistort with DistortionParameter `p`."""
    def brightness(x):
        if rng.random() < p.brightness_prob:
            delta = rng.uniform(-p.brightness_delta, p.brightness_delta)
            return _affine(x, 1.0, delta) if abs(delta) > 0 else x
        return x

    def contrast(x):
        if rng.random() < p.contrast_prob:
            alpha = rng.uniform(p.contrast_lower, p.contrast_upper)
            return _affine(x, alpha, 0.0) if abs(alpha - 1) > 1e-3 else x
        return x

    def saturation(x):
        if rng.random() < p.saturation_prob and x.shape[2] == 3:
            alpha = rng.uniform(p.saturation_lower, p.saturation_upper)
            return _hsv_channel(x, 1, alpha, 0.0) if abs(alpha - 1) > 1e-3 else x
        return x

    def hue(x):
        if rng.random() < p.hue_prob and x.shape[2] == 3:
            delta = rng.uniform(-p.hue_delta, p.hue_delta)
            return _hsv_channel(x, 0, 1.0, delta) if abs(delta) > 0 else x
        return x

    def order(x):
        if rng.random() < p.random_order_prob:
            return np.ascontiguousarray(x[..., rng.permutation(x.shape[2])])
        return x

    steps = ((brightness, contrast, saturation, hue, order) if rng.random() > 0.5
             else (brightness, saturation, hue, contrast, order))
    for step in steps:
        img = step(img)
    return img


# ------------------------------------------------------------------------ geometry

def project(frame: np.ndarray, boxes: np.ndarray, emit=None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in the frame of `frame` (a box in the current image's units): (boxes, kept index).

    Boxes failing the emit constraint (EmitConstraint message or None), lying outside the frame
    or left without area after clipping are dropped (SSD's TransformAnnotation + ProjectBBox).
    """
    out, kept = [], []
    fw, fh = frame[2] - frame[0], frame[3] - frame[1]
    for k, b in enumerate(boxes):
        if emit is not None:
            if emit.emit_type == CENTER:
                cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                if not (frame[0] <= cx <= frame[2] and frame[1] <= cy <= frame[3]):
                    continue
            elif not coverage(b, frame) > emit.emit_overlap:
                continue
        if b[0] >= frame[2] or b[2] <= frame[0] or b[1] >= frame[3] or b[3] <= frame[1]:
            continue
        p = np.clip(np.array([(b[0] - frame[0]) / fw, (b[1] - frame[1]) / fh,
                              (b[2] - frame[0]) / fw, (b[3] - frame[1]) / fh], dtype=f32), 0, 1)
        if _size(p) > 0:
            out.append(p)
            kept.append(k)
    return (np.asarray(out, dtype=f32).reshape(-1, 4), np.asarray(kept, dtype=np.int64))


def expand(img: np.ndarray, p, mean: Sequence[float], rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """SSD's ExpandImage: (image, frame of the original image in the expanded one's units)."""
    if rng.random() > p.prob or abs(p.max_expand_ratio - 1.0) < 1e-2:
        return img, None
    ratio = rng.uniform(1.0, p.max_expand_ratio)
    h, w, c = img.shape
    eh, ew = int(h * ratio), int(w * ratio)
    top, left = math.floor(rng.uniform(0, eh - h)), math.floor(rng.uniform(0, ew - w))
    canvas = np.empty((eh, ew, c), dtype=np.uint8)
    canvas[...] = _fill(mean, c)
    canvas[top:top + h, left:left + w] = img
    # The expanded image seen from the original's frame, as SSD's expand_bbox.
    frame = np.array([-left / w, -top / h, (ew - left) / w, (eh - top) / h], dtype=f32)
    return canvas, frame


# SampleConstraint's tests, in SSD's order: (field suffix, value of (sample, object))
_CONSTRAINTS = (("jaccard_overlap", jaccard), ("sample_coverage", coverage),
                ("object_coverage", lambda sample, obj: coverage(obj, sample)))


def _within(c, name: str, value: float) -> bool:
    return not ((c.HasField(f"min_{name}") and value < getattr(c, f"min_{name}")) or
                (c.HasField(f"max_{name}") and value > getattr(c, f"max_{name}")))


def _satisfies(sample: np.ndarray, objects: np.ndarray, c) -> bool:
    """SSD's SatisfySampleConstraint: no constraint, or one object meets them. As in the fork,
    a test passed for one object counts even when a later test of that object fails."""
    tests = [(name, fn) for name, fn in _CONSTRAINTS
             if c.HasField(f"min_{name}") or c.HasField(f"max_{name}")]
    if not tests:
        return True
    found = False
    for obj in objects:
        for name, fn in tests:
            if not _within(c, name, fn(sample, obj)):
                break
            found = True
        else:
            return True
    return found


def sample_crops(objects: np.ndarray, samplers, rng: np.random.Generator) -> list[np.ndarray]:
    """SSD's GenerateBatchSamples over BatchSampler messages: the crops that satisfied them."""
    out: list[np.ndarray] = []
    for bs in samplers:
        if not bs.use_original_image:
            continue
        s = bs.sampler
        found = 0
        for _ in range(bs.max_trials):
            if bs.HasField("max_sample") and found >= bs.max_sample:
                break
            scale = rng.uniform(s.min_scale, s.max_scale)
            aspect = rng.uniform(s.min_aspect_ratio, s.max_aspect_ratio)
            aspect = min(max(aspect, scale ** 2), 1 / scale ** 2)
            bw, bh = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
            x0, y0 = rng.uniform(0, max(0.0, 1 - bw)), rng.uniform(0, max(0.0, 1 - bh))
            sample = np.array([x0, y0, x0 + bw, y0 + bh], dtype=f32)
            if _satisfies(sample, objects, bs.sample_constraint):
                found += 1
                out.append(sample)
    return out


def crop(img: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The pixels of `frame` (clipped to the image), as SSD's CropImage rounds them."""
    h, w = img.shape[:2]
    f = np.clip(frame, 0, 1)
    x0, y0 = int(f[0] * w), int(f[1] * h)
    cw, ch = int(f[2] * w - f[0] * w), int(f[3] * h - f[1] * h)
    return np.ascontiguousarray(img[y0:y0 + max(1, ch), x0:x0 + max(1, cw)])


def resize(img: np.ndarray, boxes: np.ndarray, p, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """SSD's ApplyResize for ResizeParameter `p` (WARP or FIT_LARGE_SIZE_AND_PAD)."""
    import cv2

    modes = list(p.interp_mode) or [1]
    interp = getattr(cv2, _INTERP[modes[int(rng.integers(len(modes)))]])
    h, w = img.shape[:2]
    nh, nw = int(p.height), int(p.width)
    if p.resize_mode == WARP:
        out = cv2.resize(img, (nw, nh), interpolation=interp)
        return out.reshape(nh, nw, -1), boxes
    # FIT_LARGE_SIZE_AND_PAD: the larger side fits, the other is centred and padded.
    if f32(w) / f32(h) > f32(nw) / f32(nh):
        rw, rh = nw, int(math.floor(f32(nw) / (f32(w) / f32(h))))
    else:
        rw, rh = int(math.floor(nh * (f32(w) / f32(h)))), nh
    top, left = (nh - rh) // 2, (nw - rw) // 2
    small = cv2.resize(img, (rw, rh), interpolation=interp).reshape(rh, rw, -1)
    out = np.empty((nh, nw, img.shape[2]), dtype=np.uint8)
    out[...] = _fill(list(p.pad_value), img.shape[2])
    out[top:top + rh, left:left + rw] = small
    scale = np.array([rw / nw, rh / nh, rw / nw, rh / nh], dtype=f32)
    shift = np.array([left / nw, top / nh, left / nw, top / nh], dtype=f32)
    return out, (boxes * scale + shift).astype(f32)


def mirror(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip of the image and its boxes (xmin' = 1 - xmax)."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1 - boxes[:, 2], 1 - boxes[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), flipped
