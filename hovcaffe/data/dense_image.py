"""Feed for SegNet's ``DenseImageData`` layer: a list of ``image label-image`` pairs.

Semantics of the SegNet fork (alexgkendall/caffe-segnet, with the crop and mirror settings of
TimoSaemann/caffe-segnet-cudnn5, the build SegNet users run today):

* the list file holds whitespace-separated pairs ``image label`` (paths prefixed by
  ``root_folder`` as plain strings, relative ones found by hovcaffe's path rule);
* the image is read in colour (BGR) or grayscale (``is_color``), the label image always in
  grayscale; with ``new_height``/``new_width`` both are resized, the image bilinearly and the
  label with nearest neighbours, so label values stay class ids;
* ``dense_image_data_param.mirror`` flips image and label together with probability 1/2, then
  ``crop_height``/``crop_width`` cut the same random window from both - in every phase, as the
  fork does;
* ``transform_param`` mean and scale apply to the image only; its ``mirror`` and ``crop_size``
  are refused, as the fork refuses them (they would move image and label apart);
* tops: data (N, C, H, W) and label (N, 1, H, W), float32 pixel values;
* ``shuffle: true`` reshuffles every epoch in TRAIN (TEST reads in list order, like hovcaffe's
  other readers); ranks take entries i = rank (mod ranks).

Images are read and decoded per batch (the fork does the same in its prefetch thread). Random
choices come from a generator keyed by (seed, rank, phase, epoch, batch), so ``state_dict()``
after any batch resumes with the same following batches.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hovcaffe.data.codecs import decode_image
from hovcaffe.data.registry import FeedContext, register_feed
from hovcaffe.data.sample_feed import TRAIN, SampleFeed
from hovcaffe.data.storage import require
from hovcaffe.data.transform import TransformSpec, Transformer
from hovcaffe.errors import DataSourceError, NetDefinitionError



@dataclasses.dataclass(frozen=True)
class Pair:
    image: str
    label: str
    line: int


def parse_pairs(text: str, where: str) -> list[Pair]:
    """The ``image label`` pairs of a DenseImageData list (tokens read in pairs, as `>>` does).

    Raises:
        DataSourceError: an odd number of names, or none (file:line of the last one named).
    """
    tokens = [(tok, lineno) for lineno, line in enumerate(text.splitlines(), 1) for tok in line.split()]
    if not tokens:
        raise DataSourceError(f"{where}: the list names no images")
    if len(tokens) % 2:
        raise DataSourceError(f"{where}:{tokens[-1][1]}: {tokens[-1][0]!r} has no label image; "
                              f"each entry is 'image label-image'")
    return [Pair(tokens[i][0], tokens[i + 1][0], tokens[i][1]) for i in range(0, len(tokens), 2)]


@dataclasses.dataclass(frozen=True)
class DenseSettings:
    """The parts of a DenseImageData layer the feed needs."""

    source: str
    batch_size: int
    root_folder: str = ""
    new_hw: tuple[int, int] = (0, 0)
    crop_hw: tuple[int, int] = (0, 0)
    is_color: bool = True
    mirror: bool = False
    shuffle: bool = False

    @classmethod
    def from_layer(cls, layer, source_override: str | None = None) -> "DenseSettings":
        p = layer.dense_image_data_param
        where = f"DenseImageData layer {layer.name!r}"
        if p.batch_size <= 0:
            raise NetDefinitionError(f"{where} needs a positive batch_size")
        if bool(p.new_height) != bool(p.new_width):
            raise NetDefinitionError(f"{where}: set new_height and new_width together")
        if bool(p.crop_height) != bool(p.crop_width):
            raise NetDefinitionError(f"{where}: set crop_height and crop_width together")
        tp = layer.transform_param
        if tp.mirror or tp.crop_size:
            raise NetDefinitionError(
                f"{where}: transform_param mirror/crop_size would move the image away from its "
                f"label (SegNet refuses them too); use dense_image_data_param mirror, crop_height "
                f"and crop_width, which apply to both")
        if p.HasField("mean_file"):
            raise NetDefinitionError(f"{where}: dense_image_data_param.mean_file is not read by "
                                     f"SegNet's layer either; use transform_param mean_file")
        return cls(source=source_override or p.source, batch_size=int(p.batch_size),
                   root_folder=p.root_folder, new_hw=(int(p.new_height), int(p.new_width)),
                   crop_hw=(int(p.crop_height), int(p.crop_width)), is_color=bool(p.is_color),
                   mirror=bool(p.mirror), shuffle=bool(p.shuffle))


def _resize(img: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    hwc = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    out = cv2.resize(hwc, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


class DenseImageFeed(SampleFeed):
    """Batches of (image, label image) pairs; see the module docstring."""

    def __init__(self, settings: DenseSettings, tops: list[str], transform: TransformSpec | None,
                 ctx: FeedContext) -> None:
        if len(tops) != 2:
            raise NetDefinitionError(f"DenseImageData takes two tops (data, label), got {tops}")
        self.s, self.tops = settings, tops
        self.base_dir = ctx.base_dir
        self.list_loc = require(settings.source, ctx.base_dir, what="DenseImageData source")
        pairs = parse_pairs(self.list_loc.read_bytes().decode("utf-8"), settings.source)
        self.pairs = pairs[ctx.rank::ctx.world_size]
        if not self.pairs:
            raise DataSourceError(f"{settings.source}: {len(pairs)} entries leave none for rank "
                                  f"{ctx.rank} of {ctx.world_size}")
        super().__init__(ctx, settings.batch_size, len(self.pairs))
        self.transformer = Transformer(transform, self.phase) if transform and not transform.is_identity \
            else None

    def make_batch(self, samples: list[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        images, labels = zip(*(self._load(self.pairs[self._index(k)], rng) for k in samples))
        data = np.stack(images)
        data = self.transformer.apply(data, *self._no_move(len(data))) if self.transformer else \
            torch.from_numpy(data.astype(np.float32))
        label = torch.from_numpy(np.stack(labels).astype(np.float32))
        return {self.tops[0]: data, self.tops[1]: label}

    # ----------------------------------------------------------------- internals

    def _index(self, sample: int) -> int:
        """List index of the sample-th sample this rank reads (epochs reshuffled in TRAIN)."""
        n = len(self.pairs)
        epoch, within = divmod(sample, n)
        if self.phase == TRAIN and self.s.shuffle:
            order = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
                [self.seed, self.ctx.rank, epoch]))).permutation(n)
            return int(order[within])
        return within

    @staticmethod
    def _no_move(n: int):
        zeros = np.zeros(n, np.int64)
        return zeros, zeros, np.zeros(n, bool)

    def _read(self, name: str, color: str, line: int) -> np.ndarray:
        url = self.s.root_folder + name
        try:
            return decode_image(require(url, self.base_dir, what="DenseImageData image").read_bytes(), color)
        except ValueError as exc:
            raise DataSourceError(f"{self.s.source}:{line}: {url}: {exc}") from None

    def _load(self, pair: Pair, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image = self._read(pair.image, "color" if self.s.is_color else "gray", pair.line)
        label = self._read(pair.label, "gray", pair.line)
        if self.s.new_hw[0]:
            image = _resize(image, self.s.new_hw, nearest=False)
            label = _resize(label, self.s.new_hw, nearest=True)
        if image.shape[1:] != label.shape[1:]:
            raise DataSourceError(f"{self.s.source}:{pair.line}: image {pair.image} is "
                                  f"{image.shape[1]}x{image.shape[2]} but label {pair.label} is "
                                  f"{label.shape[1]}x{label.shape[2]}")
        if self.s.mirror and rng.integers(2):
            image, label = image[:, :, ::-1], label[:, :, ::-1]
        ch, cw = self.s.crop_hw
        if ch:
            h, w = image.shape[1:]
            if ch > h or cw > w:
                raise DataSourceError(f"{self.s.source}:{pair.line}: crop {ch}x{cw} is larger than "
                                      f"the {h}x{w} image {pair.image}")
            top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            image = image[:, top:top + ch, left:left + cw]
            label = label[:, top:top + ch, left:left + cw]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


@register_feed("DenseImageData")
def make_dense_image_data_feed(layer, ctx: FeedContext) -> DenseImageFeed:
    """Feed for SegNet's ``DenseImageData`` layer (see the module docstring)."""
    settings = DenseSettings.from_layer(layer, ctx.source_override)
    transform = TransformSpec.from_proto(layer.transform_param, ctx.base_dir) \
        if layer.HasField("transform_param") else None
    return DenseImageFeed(settings, list(layer.top), transform, ctx)
