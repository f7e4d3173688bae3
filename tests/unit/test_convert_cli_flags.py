"""`hovcaffe convert` flags through the CLI (--no-spark, in-process): CIFAR's test split, grayscale
resized image lists under a root folder, --compression, --row-group-mb, --codec, --labels,
--on-error skip counts, --force. Rows are read back without hovcaffe (pyarrow, numpy, OpenCV)."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from data_fixtures import read_rows, write_cifar, write_image_list, write_mnist
from hovcaffe.cli import main


def convert(*args: str, code: int = 0):
    result = CliRunner().invoke(main, ["convert", *args, "--no-spark"])
    assert result.exit_code == code, result.output
    return result


def parts(folder):
    return sorted(folder.glob("part-*.parquet"))


def test_cifar_test_split_takes_only_the_test_batch(tmp_path):
    paths, _, _ = write_cifar(tmp_path / "cifar", counts=(2, 3, 2, 1, 2, 5))
    test_file = tmp_path / "cifar" / "test_batch.bin"
    paths[5].rename(test_file)   # data_batch_1..5 and CIFAR's test batch
    raw = np.frombuffer(test_file.read_bytes(), np.uint8).reshape(5, 1 + 3 * 32 * 32)
    convert("cifar", str(tmp_path / "cifar"), str(tmp_path / "test_ds"), "--split", "test")
    convert("cifar", str(tmp_path / "cifar"), str(tmp_path / "train_ds"), "--split", "train")
    rows = read_rows(tmp_path / "test_ds")
    assert rows["label"] == raw[:, 0].tolist()
    got = np.stack(rows["data"])
    assert got.shape == (5, 3, 32, 32)
    # Caffe stores CIFAR as it comes (R, G, B planes); any channel flip shows up here
    np.testing.assert_array_equal(got.reshape(5, -1), raw[:, 1:])
    assert len(read_rows(tmp_path / "train_ds")["label"]) == 2 + 3 + 2 + 1 + 2


def test_gray_resized_image_list_under_a_root_folder_with_bad_images_skipped(tmp_path):
    list_path, _, labels, names = write_image_list(tmp_path, n=6, shape=(3, 12, 10))
    for bad in (names[1], names[4]):
        (tmp_path / bad).write_bytes(b"not an image")
    out = convert("imagelist", str(list_path), str(tmp_path / "ds"), "--root-folder", f"{tmp_path}/",
                  "--gray", "--new-height", "7", "--new-width", "5", "--on-error", "skip",
                  "--compression", "gzip", "--codec", "raw")
    assert "4 rows" in out.output and "2 bad record(s) skipped" in out.output
    rows = read_rows(tmp_path / "ds")
    good = [i for i in range(6) if i not in (1, 4)]
    assert rows["label"] == [int(labels[i]) for i in good]
    for i, data in zip(good, rows["data"], strict=True):
        gray = cv2.imread(str(tmp_path / names[i]), cv2.IMREAD_GRAYSCALE)
        want = cv2.resize(gray, (5, 7), interpolation=cv2.INTER_LINEAR)   # Caffe's cv::resize
        np.testing.assert_array_equal(np.asarray(data).reshape(7, 5), want)
    for path in parts(tmp_path / "ds"):
        meta = pq.ParquetFile(path).metadata
        assert {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                for c in range(meta.num_columns)} == {"GZIP"}
    # without skipping, the first bad image stops the conversion (a user error naming it)
    failed = convert("imagelist", str(list_path), str(tmp_path / "ds2"), "--root-folder", f"{tmp_path}/",
                     code=2)
    assert names[1] in failed.output and not (tmp_path / "ds2").exists()


def test_row_group_size_and_separate_labels_file_and_force(tmp_path):
    src, images, labels = write_mnist(tmp_path / "src", n=200)
    moved = tmp_path / "elsewhere" / "labels-idx1-ubyte"
    moved.parent.mkdir()
    shutil.move(str(src).replace("images-idx3", "labels-idx1"), moved)
    convert("mnist", str(src), str(tmp_path / "ds"), "--labels", str(moved), "--row-group-mb", "0.01")
    rows = read_rows(tmp_path / "ds")
    assert rows["label"] == labels.tolist()
    groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in parts(tmp_path / "ds"))
    assert groups >= 200 * 28 * 28 // 10_000  # 0.01 MB groups of 784-byte images: ~13 rows each
    before = {p.name: p.stat().st_mtime_ns for p in parts(tmp_path / "ds")}
    again = convert("mnist", str(src), str(tmp_path / "ds"), "--labels", str(moved), "--row-group-mb", "0.01")
    assert "up to date" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in parts(tmp_path / "ds")} == before
    forced = convert("mnist", str(src), str(tmp_path / "ds"), "--labels", str(moved), "--row-group-mb", "0.01",
                     "--force")
    assert "up to date" not in forced.output and "200 rows" in forced.output
    assert {p.name: p.stat().st_mtime_ns for p in parts(tmp_path / "ds")} != before
    assert read_rows(tmp_path / "ds")["label"] == labels.tolist()
