"""Caffe's ``transform_param`` (DataTransformer), applied to a whole batch at once.

Per image, in Caffe's order:

1. crop to ``crop_size`` × ``crop_size``: random offsets ``h_off ∈ [0, H-crop]``, ``w_off ∈ [0, W-crop]``
   in TRAIN, the centre ``((H-crop)//2, (W-crop)//2)`` in TEST;
2. mirror horizontally with probability ½ when ``mirror: true`` — in *every* phase (Caffe has no
   TEST check);
3. subtract the mean: ``mean_file`` values taken at the pixel's *source* location (the full-size
   mean image cropped with the same offsets, before mirroring), or ``mean_value`` per channel (one
   value means all channels);
4. multiply by ``scale``.

So ``out[c, h, w'] = (x[c, h_off+h, w_off+w] - mean[c, h_off+h, w_off+w]) * scale`` with
``w' = crop-1-w`` when mirrored, computed in float32 like Caffe's ``Dtype``.
``force_color`` / ``force_gray`` only change how *encoded* images are decoded (see
:attr:`TransformSpec.color`); raw pixels are used as stored, as in Caffe.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from hovcaffe.errors import DataSourceError, NetDefinitionError

log = logging.getLogger(__name__)
TRAIN, TEST = 0, 1


@dataclasses.dataclass(frozen=True, eq=False)
class TransformSpec:
    """A parsed ``transform_param``.

    Attributes:
        mean: the mean_file image as a C×H×W float32 array (None without mean_file).
        mean_values: the ``mean_value`` entries (empty without them).
    """

    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean: np.ndarray | None = None
    mean_values: tuple[float, ...] = ()
    force_color: bool = False
    force_gray: bool = False

    def __post_init__(self):
        if self.mean is not None and self.mean_values:
            raise NetDefinitionError("transform_param: mean_file and mean_value cannot both be set")
        if self.force_color and self.force_gray:
            raise NetDefinitionError("transform_param: force_color and force_gray cannot both be set")

    @property
    def color(self) -> str | None:
        """Decode flag for encoded images implied by force_color/force_gray (None: native)."""
        return "color" if self.force_color else "gray" if self.force_gray else None

    @property
    def is_identity(self) -> bool:
        return (self.scale == 1 and not self.mirror and not self.crop_size and self.mean is None
                and not self.mean_values)

    @classmethod
    def from_proto(cls, param, base_dir: str | None = None) -> "TransformSpec":
        """From a ``caffe_pb2.TransformationParameter`` (mean_file read relative to `base_dir`)."""
        mean = None
        if param.HasField("mean_file"):
            mean = read_mean_file(param.mean_file, base_dir)
        return cls(scale=float(np.float32(param.scale)), mirror=bool(param.mirror),
                   crop_size=int(param.crop_size), mean=mean,
                   mean_values=tuple(float(np.float32(v)) for v in param.mean_value),
                   force_color=bool(param.force_color), force_gray=bool(param.force_gray))


def read_mean_file(url: str, base_dir: str | None = None) -> np.ndarray:
    """A ``.binaryproto`` mean image as C×H×W float32 (a leading num=1 axis is dropped)."""
    from hovcaffe.data.storage import require

    return mean_from_bytes(require(url, base_dir, what="mean_file").read_bytes(), url)


def mean_from_bytes(data: bytes, url: str) -> np.ndarray:
    """The bytes of a ``.binaryproto`` mean image as C×H×W float32; `url` names it in errors."""
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import blob_to_array

    try:
        blob = caffe_pb2.BlobProto.FromString(data)
        arr = np.asarray(blob_to_array(blob), dtype=np.float32)
    except Exception as exc:  # protobuf DecodeError and shape errors alike
        raise DataSourceError(f"mean_file {url}: not a BlobProto binaryproto ({exc})") from exc
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise DataSourceError(f"mean_file {url}: expected a 1xCxHxW blob, got shape {arr.shape}")
    return arr


class Transformer:
    """Applies a :class:`TransformSpec` to batches for one phase."""

    def __init__(self, spec: TransformSpec, phase: int):
        self.spec = spec
        self.phase = phase

    def sample_params(self, n: int, height: int, width: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image (h_off, w_off, flip) for a batch of `n` images of `height` × `width`."""
        k = self.spec.crop_size
        if k:
            if k > height or k > width:
                raise DataSourceError(f"transform_param crop_size {k} is larger than the {height}x{width} "
                                      f"images")
            if self.phase == TRAIN:
                h_off = rng.integers(0, height - k + 1, n)
                w_off = rng.integers(0, width - k + 1, n)
            else:
                h_off = np.full(n, (height - k) // 2)
                w_off = np.full(n, (width - k) // 2)
        else:
            h_off = w_off = np.zeros(n, np.int64)
        flip = rng.random(n) < 0.5 if self.spec.mirror else np.zeros(n, bool)
        return h_off.astype(np.int64), w_off.astype(np.int64), flip

    def __call__(self, images, rng: np.random.Generator) -> torch.Tensor:
        """Transform a batch: an (N, C, H, W) array, or a list of C×H×W arrays (sizes may differ)."""
        if isinstance(images, list):
            return self._ragged(images, rng)
        n, _, h, w = images.shape
        return self.apply(images, *self.sample_params(n, h, w, rng))

    def apply(self, images: np.ndarray, h_off: np.ndarray, w_off: np.ndarray, flip: np.ndarray
              ) -> torch.Tensor:
        """The transform with given crop offsets and mirror flags (float32 (N, C, k, k) tensor).

        The arithmetic runs in NumPy on purpose: it is single-threaded, so a reader thread does not
        fight the training step's intra-op threads (torch's small-tensor ops spin on a busy machine).
        """
        spec = self.spec
        n, c, h, w = images.shape
        self._check_mean(c, h, w)
        k = spec.crop_size
        rows = cols = None
        if k:
            rows = h_off[:, None] + np.arange(k)
            cols = w_off[:, None] + np.where(flip[:, None], np.arange(k - 1, -1, -1), np.arange(k))
            x = _gather(images, rows, cols)
        elif flip.any():
            x = images.copy()
            x[flip] = images[flip][..., ::-1]
        else:
            x = images
        out = np.array(x, dtype=np.float32, order="C")   # always a fresh, writable float32 copy
        if spec.mean is not None:
            if k:
                mean = _gather(np.broadcast_to(spec.mean, (n, c, h, w)), rows, cols)
            elif flip.any():
                mean = np.broadcast_to(spec.mean, (n, c, h, w)).copy()
                mean[flip] = mean[flip][..., ::-1]
            else:
                mean = spec.mean
            np.subtract(out, mean, out=out)
        elif spec.mean_values:
            np.subtract(out, self._mean_values(c), out=out)
        if spec.scale != 1:
            np.multiply(out, np.float32(spec.scale), out=out)
        return torch.from_numpy(out)

    def _mean_values(self, channels: int) -> np.ndarray:
        mv = self.spec.mean_values
        if len(mv) == 1:
            mv = mv * channels
        elif len(mv) != channels:
            raise DataSourceError(f"transform_param has {len(mv)} mean_value entries for "
                                  f"{channels}-channel images (give 1 or {channels})")
        return np.asarray(mv, dtype=np.float32).reshape(1, channels, 1, 1)

    def _check_mean(self, c: int, h: int, w: int) -> None:
        mean = self.spec.mean
        if mean is not None and mean.shape != (c, h, w):
            raise DataSourceError(f"transform_param mean_file is {'x'.join(map(str, mean.shape))} but the "
                                  f"images are {c}x{h}x{w} (the mean must have the uncropped size)")

    def _ragged(self, images: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        if not self.spec.crop_size:
            raise DataSourceError(f"images in one batch have different sizes "
                                  f"({sorted({i.shape for i in images})[:3]}...); set crop_size, or "
                                  f"resize them when converting (new_height/new_width)")
        outs = []
        for img in images:
            _, h, w = img.shape
            outs.append(self.apply(img[None], *self.sample_params(1, h, w, rng)))
        return torch.cat(outs)


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x[n, c, rows[n, i], cols[n, j]] for every n, c, i, j (per-image crop windows)."""
    n, c = x.shape[:2]
    if np.all(rows == rows[0]) and np.all(cols == cols[0]) and np.all(np.diff(cols[0]) == 1):
        r0, c0 = int(rows[0, 0]), int(cols[0, 0])
        return x[:, :, r0:r0 + rows.shape[1], c0:c0 + cols.shape[1]]
    return x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]
