"""Procedurally drawn handwritten-looking digits, written as MNIST idx files.

The LeNet example needs an MNIST-like dataset but the repository must not download anything, so
this module draws one: each digit class is a few pen strokes (polylines in a unit box); every
sample bends the control points, applies a random rotation / shear / scale / shift, picks a pen
width, rasterises the strokes with anti-aliasing into 28x28 (the glyph in the central 20x20 box,
as MNIST centres its digits) and adds pixel noise. The output is byte-for-byte the MNIST idx
format (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, ...), so `hovcaffe convert mnist`
and Caffe's own `convert_mnist_data` read it.

    python examples/lenet/digits.py OUT_DIR [--train 6000] [--test 1000] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import struct

import numpy as np

SIZE = 28
BOX = 20  # glyph box inside the image, like MNIST


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, stop: float = 360.0,
             n: int = 14) -> list[tuple[float, float]]:
    t = np.radians(np.linspace(start, stop, n))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


# Strokes of each class, in a unit box (x to the right, y down).
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_ellipse(0.5, 0.5, 0.3, 0.45)],
    1: [[(0.35, 0.2), (0.55, 0.05), (0.55, 0.95)]],
    2: [_ellipse(0.5, 0.3, 0.3, 0.25, 190, 370, 8) + [(0.2, 0.95), (0.85, 0.95)]],
    3: [_ellipse(0.48, 0.28, 0.28, 0.22, 200, 450, 9), _ellipse(0.48, 0.72, 0.3, 0.23, 270, 520, 9)],
    4: [[(0.65, 0.95), (0.65, 0.05), (0.12, 0.65), (0.88, 0.65)]],
    5: [[(0.8, 0.05), (0.27, 0.05), (0.23, 0.45)] + _ellipse(0.5, 0.68, 0.3, 0.26, 230, 500, 10)],
    6: [[(0.72, 0.05), (0.4, 0.3), (0.24, 0.62)] + _ellipse(0.5, 0.7, 0.26, 0.23, 180, 540, 14)],
    7: [[(0.15, 0.05), (0.85, 0.05), (0.42, 0.95)]],
    8: [_ellipse(0.5, 0.27, 0.22, 0.22), _ellipse(0.5, 0.72, 0.27, 0.23)],
    9: [_ellipse(0.5, 0.3, 0.26, 0.23), [(0.76, 0.3), (0.68, 0.95)]],
}


def _segments(strokes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    a = np.concatenate([s[:-1] for s in strokes])
    b = np.concatenate([s[1:] for s in strokes])
    return a, b


def _rasterize(a: np.ndarray, b: np.ndarray, width: float, grid: np.ndarray) -> np.ndarray:
    """Anti-aliased pen of `width` pixels along segments a->b (pixel coordinates)."""
    ab = b - a                                            # (S, 2)
    ap = grid[:, None, :] - a[None, :, :]                 # (P, S, 2)
    denom = np.maximum((ab * ab).sum(-1), 1e-9)
    t = np.clip((ap * ab[None]).sum(-1) / denom, 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    dist = np.sqrt(((grid[:, None, :] - nearest) ** 2).sum(-1)).min(axis=1)
    return np.clip(width / 2 - dist + 0.5, 0.0, 1.0)


def draw_digit(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 image of digit `label` (white on black, like MNIST)."""
    strokes = [np.asarray(s, dtype=np.float64) for s in STROKES[label]]
    strokes = [s + rng.normal(0.0, 0.05, s.shape) for s in strokes]        # wobbly pen
    if rng.random() < 0.4:  # a stray mark, as scanned handwriting has
        start = rng.uniform(0.0, 1.0, 2)
        strokes.append(np.stack([start, start + rng.normal(0.0, 0.25, 2)]))
    angle = np.radians(rng.uniform(-25, 25))
    shear = rng.uniform(-0.4, 0.4)
    scale = rng.uniform(0.7, 1.1, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    shift = rng.uniform(-3.0, 3.0, size=2)
    centre = np.array([SIZE / 2, SIZE / 2])
    pts = [((s - 0.5) * BOX) @ affine.T + centre + shift for s in strokes]
    a, b = _segments(pts)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    grid = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    ink = _rasterize(a, b, rng.uniform(1.2, 3.2), grid).reshape(SIZE, SIZE)
    img = ink * rng.uniform(120, 255) + rng.normal(0.0, 25.0, ink.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (N x 28 x 28 uint8) and labels (N uint8), classes in a shuffled cycle."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
    images = np.stack([draw_digit(int(y), rng) for y in labels])
    return images, labels


def write_idx(images: np.ndarray, labels: np.ndarray, images_path: str, labels_path: str) -> None:
    """MNIST idx3 (images) and idx1 (labels) files, big-endian headers."""
    n, rows, cols = images.shape
    with open(images_path, "wb") as fh:
        fh.write(struct.pack(">iiii", 2051, n, rows, cols))
        fh.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    with open(labels_path, "wb") as fh:
        fh.write(struct.pack(">ii", 2049, n))
        fh.write(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())


def write_dataset(out_dir: str, train: int = 6000, test: int = 1000, seed: int = 0) -> dict[str, str]:
    """Write the train and test idx files into `out_dir`; returns {split: images path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, count, split_seed in (("train", train, seed), ("t10k", test, seed + 1)):
        images, labels = make_digits(count, split_seed)
        img_path = os.path.join(out_dir, f"{split}-images-idx3-ubyte")
        write_idx(images, labels, img_path, os.path.join(out_dir, f"{split}-labels-idx1-ubyte"))
        paths[split] = img_path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, path in write_dataset(args.out_dir, args.train, args.test, args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
