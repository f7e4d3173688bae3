"""Small source files in Caffe's data formats, written with the format's own rules, for data tests.

Each writer returns the arrays it wrote, so a test compares converted rows with them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_mnist(folder: Path, n: int = 60, rows: int = 28, cols: int = 28, seed: int = 0,
                prefix: str = "train") -> tuple[Path, np.ndarray, np.ndarray]:
    """idx3 images + idx1 labels (big-endian headers, magic 2051 / 2049)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    img_path = folder / f"{prefix}-images-idx3-ubyte"
    img_path.write_bytes(struct.pack(">iiii", 2051, n, rows, cols) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
    return img_path, images, labels


def write_cifar(folder: Path, counts=(7, 5), seed: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """CIFAR-10 binary files: per record 1 label byte then the R, G, B 32×32 planes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, images, labels = [], [], []
    for i, n in enumerate(counts, 1):
        img = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        lab = rng.integers(0, 10, n).astype(np.uint8)
        path = folder / f"data_batch_{i}.bin"
        path.write_bytes(b"".join(bytes([lab[j]]) + img[j].tobytes() for j in range(n)))
        paths.append(path)
        images.append(img)
        labels.append(lab)
    return paths, np.concatenate(images), np.concatenate(labels)


def raw_datum(img: np.ndarray, label: int) -> bytes:
    from hovcaffe.caffe import caffe_pb2

    d = caffe_pb2.Datum(channels=img.shape[0], height=img.shape[1], width=img.shape[2],
                        data=img.tobytes(), label=label)
    return d.SerializeToString()


def encoded_datum(img: np.ndarray, label: int, ext: str = ".jpg") -> tuple[bytes, np.ndarray]:
    """A Datum holding the image encoded by OpenCV; returns it and the pixels OpenCV decodes."""
    import cv2

    from hovcaffe.caffe import caffe_pb2

    hwc = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    ok, buf = cv2.imencode(ext, hwc)
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    decoded = decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)
    d = caffe_pb2.Datum(data=buf.tobytes(), label=label, encoded=True)
    return d.SerializeToString(), decoded


def float_datum(values: np.ndarray, label: int) -> bytes:
    from hovcaffe.caffe import caffe_pb2

    d = caffe_pb2.Datum(channels=values.shape[0], height=values.shape[1], width=values.shape[2],
                        float_data=values.ravel().tolist(), label=label)
    return d.SerializeToString()


def write_lmdb(path: Path, records: list[tuple[bytes, bytes]]) -> Path:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()
    return path


def lmdb_of_images(path: Path, images: np.ndarray, labels, *, encoded_every: int = 0,
                   ext: str = ".jpg") -> tuple[Path, list[np.ndarray]]:
    """LMDB with keys 00000000.. ; every `encoded_every`-th record encoded (0: none).

    Returns the path and the pixels Caffe would see for each record (decoded ones for encoded).
    """
    records, expected = [], []
    for i, (img, lab) in enumerate(zip(images, labels)):
        if encoded_every and i % encoded_every == 0:
            value, pixels = encoded_datum(img, int(lab), ext)
        else:
            value, pixels = raw_datum(img, int(lab)), img
        records.append((f"{i:08d}".encode(), value))
        expected.append(pixels)
    return write_lmdb(path, records), expected


def write_image_list(folder: Path, n: int = 9, shape=(3, 12, 10), seed: int = 0, ext: str = ".png",
                     spaces: bool = False) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """PNG files and a 'path label' list (paths relative to `folder`, used as root_folder)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names, lines = [], []
    for i in range(n):
        name = f"img/{'my image ' if spaces else 'im'}{i}{ext}"
        hwc = images[i][0] if shape[0] == 1 else images[i].transpose(1, 2, 0)
        assert cv2.imwrite(str(folder / name), hwc)
        names.append(name)
        lines.append(f"{name} {labels[i]}")
    list_path = folder / "list.txt"
    list_path.write_text("\n".join(lines) + "\n")
    return list_path, images, labels, names


def write_hdf5_list(folder: Path, rows=(4, 3), seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """Two .h5 files with datasets 'data' (rows, 2, 3) and 'target' (rows, 4), listed in a file."""
    import h5py

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, datas, targets = [], [], []
    for i, n in enumerate(rows):
        data = rng.standard_normal((n, 2, 3)).astype(np.float64)
        target = rng.standard_normal((n, 4)).astype(np.float32)
        path = folder / f"part{i}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = data
            f["target"] = target
        paths.append(path)
        datas.append(data)
        targets.append(target)
    list_path = folder / "h5list.txt"
    list_path.write_text("\n".join(str(p) for p in paths) + "\n")
    return list_path, {"data": np.concatenate(datas).astype(np.float32), "target": np.concatenate(targets)}


def read_rows(folder: Path) -> dict[str, list]:
    """Every row of a converted dataset, decoded independently of hovcaffe's reader.

    Parquet files in name order; ``numpy.save`` blobs through ``numpy.load``; image bytes through
    ``cv2.imdecode`` (native channels) as C×H×W.
    """
    import io

    import cv2
    import pyarrow.parquet as pq

    table = None
    columns: dict[str, list] = {}
    for path in sorted(Path(folder).glob("part-*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            columns.setdefault(name, []).extend(table.column(name).to_pylist())
    out: dict[str, list] = {}
    for name, values in columns.items():
        decoded = []
        for v in values:
            if isinstance(v, bytes) and v[:6] == b"\x93NUMPY":
                decoded.append(np.load(io.BytesIO(v)))
            elif isinstance(v, bytes):
                img = cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_UNCHANGED)
                decoded.append(img[None] if img.ndim == 2 else img.transpose(2, 0, 1))
            else:
                decoded.append(v)
        out[name] = decoded
    return out
