"""Feed for SSD's ``AnnotatedData`` layer, reading a dataset `hovcaffe convert annoset` wrote.

Per image, in SSD's order (weiliu89/caffe `annotated_data_layer.cpp`, see `box_augment`):
photometric distortion (``transform_param.distort_param``), expansion (``expand_param``), one
crop drawn from all samples the ``annotated_data_param.batch_sampler``s produced (none: the
whole image), resizing (``resize_param``: WARP or FIT_LARGE_SIZE_AND_PAD), the
``emit_constraint``, mirroring with probability 1/2 (``mirror``), then ``mean_value`` and
``scale``. These apply in every phase, as in the fork: a TEST net's prototxt simply has none.

Tops: data (N, C, H, W) float32 BGR, and the ground truth (1, 1, G, 8) rows [image in batch,
label, instance, xmin, ymin, xmax, ymax, difficult] over the whole batch, boxes after the
transformation (instance counts a label's boxes within an image); a batch without boxes gives
one row of -1, as SSD does. The row count varies from batch to batch: the boxes are ragged and
are never padded.

The source is the converted dataset (data_param.source or the CLI override); its rows are read
in stored order (SSD reads its LMDB sequentially; shuffle when converting), ranks take rows
i = rank (mod ranks), and the encoded images of a rank's share are held in memory. Random
choices come from a generator keyed by (seed, rank, phase, batch), so `state_dict()` after any
batch resumes with the same following batches. Not supported (refused when set): crop_size,
mean_file, noise_param, resize mode FIT_SMALL_SIZE.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from hovcaffe.data import box_augment as aug
from hovcaffe.data.codecs import decode_image
from hovcaffe.data.dataset import open_dataset
from hovcaffe.data.registry import FeedContext, register_feed
from hovcaffe.data.resolve import source_kind
from hovcaffe.data.sample_feed import SampleFeed
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError, NetDefinitionError

COLUMNS = ("data", "labels", "boxes", "difficult")
f32 = np.float32


@dataclasses.dataclass
class Sample:
    """One image with its boxes, before augmentation."""

    image: bytes
    boxes: np.ndarray       # (K, 4) float32
    labels: np.ndarray      # (K,) int
    difficult: np.ndarray   # (K,) int


def read_samples(url: str, base_dir: str, rank: int, world_size: int) -> list[Sample]:
    """This rank's rows (i = rank mod ranks) of an annoset dataset."""
    ds = open_dataset(url, base_dir)
    names = {f.name for f in ds.info.fields}
    if not set(COLUMNS) <= names:
        raise DataSourceError(f"{url}: not an annotated dataset (columns {sorted(names)}; expected "
                              f"{', '.join(COLUMNS)}); convert it with `hovcaffe convert annoset`")
    out: list[Sample] = []
    row = 0
    for g in range(len(ds.group_sizes)):
        table = ds.read_group(g, COLUMNS).to_pydict()
        for image, labels, boxes, difficult in zip(*(table[c] for c in COLUMNS)):
            if row % world_size == rank:
                out.append(Sample(image, np.asarray(boxes, f32).reshape(-1, 4),
                                  np.asarray(labels, np.int64), np.asarray(difficult, np.int64)))
            row += 1
    return out


@dataclasses.dataclass(frozen=True)
class AnnotatedSettings:
    source: str
    batch_size: int
    samplers: tuple
    transform: Any          # TransformationParameter
    mean: tuple[float, ...]

    @classmethod
    def from_layer(cls, layer, source_override: str | None = None) -> "AnnotatedSettings":
        where = f"AnnotatedData layer {layer.name!r}"
        if layer.data_param.batch_size <= 0:
            raise NetDefinitionError(f"{where} needs a positive data_param.batch_size")
        tp = layer.transform_param
        for field, why in (("crop_size", "use batch_sampler crops"),
                           ("mean_file", "use mean_value")):
            if getattr(tp, field):
                raise NetDefinitionError(f"{where}: transform_param.{field} is not supported; {why}")
        if tp.HasField("noise_param"):
            raise NetDefinitionError(f"{where}: transform_param.noise_param is not supported")
        if tp.HasField("resize_param"):
            rp = tp.resize_param
            if rp.resize_mode not in (aug.WARP, aug.FIT_LARGE_SIZE_AND_PAD):
                raise NetDefinitionError(f"{where}: resize_mode FIT_SMALL_SIZE is not supported")
            if not rp.height or not rp.width:
                raise NetDefinitionError(f"{where}: resize_param needs height and width")
        for i, bs in enumerate(layer.annotated_data_param.batch_sampler):
            s = bs.sampler
            if not 0 < s.min_scale <= s.max_scale <= 1 or \
                    not 0 < s.min_aspect_ratio <= s.max_aspect_ratio:
                raise NetDefinitionError(f"{where}: batch_sampler {i} needs 0 < min_scale <= "
                                         f"max_scale <= 1 and 0 < min_aspect_ratio <= max_aspect_ratio")
        return cls(source=source_override or layer.data_param.source,
                   batch_size=int(layer.data_param.batch_size),
                   samplers=tuple(layer.annotated_data_param.batch_sampler), transform=tp,
                   mean=tuple(float(v) for v in tp.mean_value))


class AnnotatedFeed(SampleFeed):
    """Batches of augmented images and their ground-truth rows; see the module docstring."""

    def __init__(self, settings: AnnotatedSettings, tops: list[str], ctx: FeedContext) -> None:
        if len(tops) not in (1, 2):
            raise NetDefinitionError(f"AnnotatedData takes one or two tops (data, label), got {tops}")
        self.s, self.tops = settings, tops
        loc = require(settings.source, ctx.base_dir, what="AnnotatedData source")
        if source_kind(loc) != "dataset":
            raise DataSourceError(f"{settings.source}: AnnotatedData reads a converted dataset; "
                                  f"convert the LMDB or lists first with `hovcaffe convert annoset "
                                  f"{settings.source} DST`")
        self.samples = read_samples(loc.url if not loc.is_local else loc.path, ctx.base_dir,
                                    ctx.rank, ctx.world_size)
        if not self.samples:
            raise DataSourceError(f"{settings.source}: no rows left for rank {ctx.rank} of "
                                  f"{ctx.world_size}")
        super().__init__(ctx, settings.batch_size, len(self.samples))

    def make_batch(self, samples: list[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        images, rows = [], []
        for item, number in enumerate(samples):
            sample = self.samples[number % self.num_samples]
            image, boxes, keep = self.augment(sample, rng)
            images.append(image)
            labels = sample.labels[keep]
            for k, (b, label, diff) in enumerate(zip(boxes, labels, sample.difficult[keep])):
                instance = int((labels[:k] == label).sum())
                rows.append([item, label, instance, *b.tolist(), diff])
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataSourceError(f"{self.s.source}: images of one batch differ in size "
                                  f"({sorted(shapes)}); add transform_param.resize_param")
        data = torch.from_numpy(np.stack(images))
        gt = np.asarray(rows, dtype=f32).reshape(-1, 8) if rows else np.full((1, 8), -1, f32)
        out = {self.tops[0]: data}
        if len(self.tops) > 1:
            out[self.tops[1]] = torch.from_numpy(gt).view(1, 1, -1, 8)
        return out

    # ----------------------------------------------------------------- one image
    def augment(self, sample: Sample, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C x H x W float32 image, its boxes, indices of the sample's boxes they came from)."""
        tp = self.s.transform
        img = decode_image(sample.image, "color").transpose(1, 2, 0)   # H x W x C, BGR
        boxes, keep = sample.boxes, np.arange(len(sample.boxes))
        if tp.HasField("distort_param"):
            img = aug.distort(img, tp.distort_param, rng)
        emit = tp.emit_constraint if tp.HasField("emit_constraint") else None

        def reframe(frame):
            nonlocal boxes, keep
            boxes, kept = aug.project(frame, boxes, emit)
            keep = keep[kept]

        if tp.HasField("expand_param"):
            img, frame = aug.expand(img, tp.expand_param, self.s.mean, rng)
            if frame is not None:
                reframe(frame)
        if self.s.samplers:
            crops = aug.sample_crops(boxes, self.s.samplers, rng)
            if crops:
                frame = np.clip(crops[int(rng.integers(len(crops)))], 0, 1)
                img = aug.crop(img, frame)
                reframe(frame)
        if tp.HasField("resize_param"):
            img, boxes = aug.resize(img, boxes, tp.resize_param, rng)
        if tp.mirror and rng.integers(2):
            img, boxes = aug.mirror(img, boxes)
        chw = img.transpose(2, 0, 1).astype(f32)
        if self.s.mean:
            chw -= np.asarray(self.s.mean if len(self.s.mean) == len(chw) else self.s.mean[:1],
                              f32).reshape(-1, 1, 1)
        if tp.scale != 1:
            chw *= f32(tp.scale)
        return np.ascontiguousarray(chw), boxes, keep


@register_feed("AnnotatedData")
def make_annotated_data_feed(layer, ctx: FeedContext) -> AnnotatedFeed:
    """Feed for SSD's ``AnnotatedData`` layer (see the module docstring)."""
    return AnnotatedFeed(AnnotatedSettings.from_layer(layer, ctx.source_override), list(layer.top), ctx)
