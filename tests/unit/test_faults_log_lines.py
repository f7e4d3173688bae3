"""Each conversion summary line is written once: by `hovcaffe convert` on stdout, by a data
layer's first-use conversion in the log, by the demo's own print - never also by the library."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np

from data_fixtures import write_mnist


def test_hovcaffe_convert_prints_its_summary_once(tmp_path):
    src, _, _ = write_mnist(tmp_path / "src", n=12)
    out = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "convert", "mnist", str(src),
                          str(tmp_path / "ds"), "--no-spark"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).count("12 rows from mnist") == 1, out.stdout + out.stderr
    assert "12 rows from mnist" in out.stdout


def test_first_use_conversion_logs_its_summary_once(tmp_path, caplog):
    from data_fixtures import lmdb_of_images
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.data.registry import FeedContext, make_feed

    images = np.random.default_rng(0).integers(0, 256, (20, 1, 6, 5), dtype=np.uint8)
    path, _ = lmdb_of_images(tmp_path / "mnist_lmdb", images, range(20))
    layer = parse_net(f'layer {{ name: "mnist" type: "Data" top: "data" top: "label" '
                      f'data_param {{ source: "{path.name}" batch_size: 8 backend: LMDB }} }}').layer[0]
    with caplog.at_level(logging.DEBUG, logger="hovcaffe"):
        make_feed(layer, FeedContext(phase=caffe_pb2.TEST, base_dir=str(tmp_path)))
    summaries = [r.getMessage() for r in caplog.records if "20 rows from lmdb" in r.getMessage()]
    assert len(summaries) == 1, caplog.text
    assert summaries[0].startswith("data layer 'mnist': ")
