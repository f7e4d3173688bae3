"""A small detection set drawn on the fly: coloured squares, discs and triangles on varied
backgrounds (gradients, noise, stripes), one to three objects per image, no downloads.

    python examples/detection/shapes.py OUT [--train 600] [--test 120] [--size 96]

writes OUT/images/*.png, OUT/train.json and OUT/test.json (hovcaffe's JSON annoset input:
normalized boxes with label names) and OUT/labelmap.prototxt (SSD's LabelMap).
"""
from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

CLASSES = ("square", "disc", "triangle")
LABEL_MAP = "".join(f'item {{ name: "{n}" label: {i} display_name: "{n}" }}\n'
                    for i, n in enumerate(("background",) + CLASSES))


def background(rs: np.random.RandomState, size: int) -> np.ndarray:
    kind = rs.randint(3)
    base = rs.randint(0, 256, 3).astype(np.float32)
    if kind == 0:      # a two-colour gradient
        other = rs.randint(0, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
        img = base * (1 - t) + other * t + np.zeros((size, 1, 1), np.float32)
    elif kind == 1:    # coloured noise
        img = base + rs.normal(0, 40, (size, size, 3)).astype(np.float32)
    else:              # stripes
        img = np.broadcast_to(base, (size, size, 3)).copy()
        step = rs.randint(6, 16)
        img[:, ::step] = rs.randint(0, 256, 3)
        img[::step] = rs.randint(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw(img: np.ndarray, kind: int, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if kind == 0:
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
    elif kind == 1:
        cv2.ellipse(img, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0), colour, -1)
    else:
        pts = np.array([[(x0 + x1) // 2, y0], [x0, y1 - 1], [x1 - 1, y1 - 1]], np.int32)
        cv2.fillPoly(img, [pts], colour)


def image(rs: np.random.RandomState, size: int) -> tuple[np.ndarray, list[dict]]:
    img = background(rs, size)
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(rs.randint(1, 4)):
        for _try in range(20):
            side = rs.randint(size // 6, size // 2)
            w = h = side
            x0, y0 = rs.randint(0, size - w), rs.randint(0, size - h)
            box = (x0, y0, x0 + w, y0 + h)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                   for b in boxes):
                break
        else:
            continue
        kind = rs.randint(3)
        colour = tuple(int(c) for c in rs.randint(0, 256, 3))
        draw(img, kind, box, colour)
        boxes.append(box)
        objects.append({"label": CLASSES[kind], "bbox": [v / size for v in box]})
    return img, objects


def write(out: str, train: int, test: int, size: int, seed: int = 0) -> None:
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rs = np.random.RandomState(seed)
    for split, count in (("train", train), ("test", test)):
        items = []
        for i in range(count):
            img, objects = image(rs, size)
            name = f"images/{split}_{i:05d}.png"
            cv2.imwrite(os.path.join(out, name), img)
            items.append({"image": name, "boxes": objects})
        with open(os.path.join(out, f"{split}.json"), "w") as fh:
            json.dump(items, fh)
    with open(os.path.join(out, "labelmap.prototxt"), "w") as fh:
        fh.write(LABEL_MAP)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--test", type=int, default=120)
    p.add_argument("--size", type=int, default=96)
    a = p.parse_args()
    write(a.out, a.train, a.test, a.size)
