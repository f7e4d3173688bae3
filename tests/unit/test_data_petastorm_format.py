"""Petastorm metadata: a crafted Unischema pickle never runs, real Petastorm datasets read with or
without petastorm, and petastorm reads what `hovcaffe convert` writes (petastorm profile only).

`tests/fixtures/petastorm_dataset` was written by real petastorm 0.13.1 + Spark
(`tests/fixtures/make_petastorm_dataset.py`, petastorm profile); its values are recomputed here by
hand from the generator's formula.
"""
from __future__ import annotations

import importlib
import os
import pickle
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import write_mnist

from conftest import REPO, ZOO
from hovcaffe.data import petastorm_format
from hovcaffe.data.dataset import open_dataset
from hovcaffe.data.petastorm_format import ROW_GROUPS_KEY, UNISCHEMA_KEY, allowed_globals
from hovcaffe.data.reader import make_batch_iterator
from hovcaffe.errors import DataSourceError
from hovcaffe.utils.safe_pickle import restricted_loads

FIXTURE = REPO / "tests" / "fixtures" / "petastorm_dataset"
FIXTURE_ROWS = 6


def petastorm_importable() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import petastorm  # noqa: F401
    except Exception:  # noqa: BLE001 - petastorm 0.13.1 fails to import on pyarrow >= 16
        return False
    return True


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "hovcaffe.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


class RunsShell:
    """Pickles as a call to os.system (what a malicious _common_metadata would hold)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_folder_with_metadata(folder, unischema_bytes: bytes) -> None:
    """A plain Parquet folder whose _common_metadata holds `unischema_bytes` under Petastorm's key."""
    folder.mkdir()
    table = pa.table({"data": pa.array([b"x"], pa.binary()), "label": pa.array([1], pa.int32())})
    pq.write_table(table, folder / "part-00000.parquet")
    pq.write_metadata(table.schema.with_metadata({UNISCHEMA_KEY: unischema_bytes}),
                      folder / "_common_metadata")


@pytest.fixture
def without_petastorm(monkeypatch):
    """Make `import petastorm` fail, as in the default profile (pyarrow >= 16)."""
    for name in ("petastorm", "petastorm.unischema", "petastorm.codecs"):
        monkeypatch.setitem(sys.modules, name, None)
    petastorm_format._petastorm_class.cache_clear()
    yield
    petastorm_format._petastorm_class.cache_clear()


# ----------------------------------------------------------------------------- crafted pickles

def test_crafted_metadata_runs_nothing_and_the_cli_exits_2(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    write_folder_with_metadata(evil, pickle.dumps(RunsShell(f"touch {marker}")))
    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    shutil.copy(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt", tmp_path / "examples" / "mnist")
    result = cli("train", "-solver", str(ZOO / "bvlc" / "mnist" / "lenet_solver.prototxt"),
                 "--train-data", str(evil), "--test-data", str(evil), "-iterations", "1",
                 "--no-progress", cwd=tmp_path)
    assert not marker.exists()
    assert result.returncode == 2, result.stderr
    message = [line for line in result.stderr.splitlines() if "refused" in line]
    assert len(message) == 1, result.stderr
    assert f"{evil}/_common_metadata" in message[0] and "system" in message[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("payload, refused", [
    ((eval, ("1",)), "builtins.eval"),
    ((subprocess.Popen, (["true"],)), "subprocess.Popen"),
    ((np.load, ("x.npy",)), "numpy.load"),
    ((importlib.import_module, ("os",)), "importlib.import_module"),
])
def test_every_other_global_is_refused_by_name(tmp_path, payload, refused):
    class Payload:
        def __reduce__(self):
            return payload

    folder = tmp_path / "ds"
    write_folder_with_metadata(folder, pickle.dumps(Payload()))
    with pytest.raises(DataSourceError, match=f"{folder}/_common_metadata: refused .* names {refused}"):
        open_dataset(str(folder))


def test_a_pickle_of_something_else_is_a_data_error(tmp_path):
    folder = tmp_path / "ds"
    write_folder_with_metadata(folder, pickle.dumps(7))
    with pytest.raises(DataSourceError, match="holds a int, not a Unischema"):
        open_dataset(str(folder))
    folder2 = tmp_path / "ds2"
    write_folder_with_metadata(folder2, b"not a pickle at all")
    with pytest.raises(DataSourceError, match="_common_metadata: its Petastorm Unischema is not readable"):
        open_dataset(str(folder2))


def test_numpy_scalars_load_but_object_scalars_do_not():
    allowed = allowed_globals()
    for value in (np.float32(1.5), np.int64(-3), np.dtype("uint8"), np.str_("ab")):
        for protocol in (0, 2, 4):
            assert restricted_loads(pickle.dumps(value, protocol=protocol), allowed, where="w", what="x") == value
    # An object-dtype scalar would be rebuilt from raw pointer bytes.
    from numpy import dtype

    class ObjectScalar:
        def __reduce__(self):
            return np.float32(0).__reduce__()[0], (dtype("O"), b"\0" * 8)

    with pytest.raises(DataSourceError, match="not readable: UnpicklingError: numpy scalar of dtype"):
        restricted_loads(pickle.dumps(ObjectScalar()), allowed, where="w", what="x")


# ----------------------------------------------------------------------------- real Petastorm datasets

def fixture_row(i: int) -> dict:
    """`make_petastorm_dataset.row(i)` as hovcaffe gives it: C×H×W, and colour images in BGR order
    (Petastorm's arrays are RGB; its codec swaps to BGR for OpenCV, hovcaffe keeps OpenCV's order)."""
    rgb = ((np.arange(60).reshape(4, 5, 3) + 7 * i) % 256).astype(np.uint8)
    return {"idx": i, "name": f"row{i}", "arr": np.arange(6, dtype=np.float32).reshape(2, 3) * i,
            "color": rgb[:, :, ::-1].transpose(2, 0, 1),
            "gray": ((np.arange(20).reshape(1, 4, 5) * 3 + i) % 256).astype(np.uint8)}


def read_fixture() -> dict[str, list]:
    it = make_batch_iterator(str(FIXTURE), phase=1, batch_size=FIXTURE_ROWS, workers=0, prefetch=0,
                             tops=["idx", "name", "arr", "color", "gray"])
    try:
        return next(iter(it))
    finally:
        it.close()


def check_fixture_rows(batch) -> None:
    order = [int(v) for v in batch["idx"].reshape(-1)]
    assert sorted(order) == list(range(FIXTURE_ROWS))
    for k, i in enumerate(order):
        want = fixture_row(i)
        assert batch["name"][k] == want["name"]
        for name in ("arr", "color", "gray"):
            np.testing.assert_array_equal(batch[name][k].numpy(), want[name].astype(np.float32))


def test_real_petastorm_dataset_reads_without_petastorm(without_petastorm):
    ds = open_dataset(str(FIXTURE))
    assert {f.name: (f.codec, f.dtype, f.shape) for f in ds.info.fields} == {
        "idx": ("scalar", "int32", ()), "name": ("string", "str", ()),
        "arr": ("ndarray", "float32", (2, 3)), "color": ("image", "uint8", (3, 4, 5)),
        "gray": ("image", "uint8", (1, 4, 5))}
    check_fixture_rows(read_fixture())


def test_real_petastorm_dataset_reads_with_petastorm():
    if not petastorm_importable():
        pytest.skip("petastorm is not importable (default profile); runs in the petastorm profile")
    assert type(petastorm_format.read_unischema(
        pq.read_schema(FIXTURE / "_common_metadata").metadata[UNISCHEMA_KEY], "f")).__module__ == \
        "petastorm.unischema"
    check_fixture_rows(read_fixture())


@pytest.mark.parametrize("protocol", [0, 2])
def test_old_protocol_pickles_with_python2_names_load(tmp_path, without_petastorm, protocol):
    """Protocol 0/2 pickles (petastorm under Python 2, the legacy package name) through the stand-ins."""
    from pyspark.sql import types as T

    fields = [petastorm_format.UnischemaField("label", np.int64, (), petastorm_format.ScalarCodec(
                  T.LongType()), False),
              petastorm_format.UnischemaField("im", np.uint8, (6, 7, 3),
                                              petastorm_format.CompressedImageCodec("jpeg"), False)]
    data = pickle.dumps(petastorm_format.Unischema("s", fields), protocol=protocol)
    ours = b"hovcaffe.data.petastorm_format\n"
    for cls, module in (("UnischemaField", b"av.ml.dataset_toolkit.unischema\n"),
                        ("Unischema", b"petastorm.unischema\n"),
                        ("ScalarCodec", b"petastorm.codecs\n"),
                        ("CompressedImageCodec", b"petastorm.codecs\n")):
        data = data.replace(b"c" + ours + cls.encode() + b"\n", b"c" + module + cls.encode() + b"\n")
    data = data.replace(b"cbuiltins\n", b"c__builtin__\n").replace(b"ccopyreg\n", b"ccopy_reg\n")
    assert ours not in data
    write_folder_with_metadata(tmp_path / "ds", data)
    got = {f.name: (f.codec, f.dtype, f.shape, f.image_format)
           for f in open_dataset(str(tmp_path / "ds")).info.fields}
    assert got == {"label": ("scalar", "int64", (), None), "im": ("image", "uint8", (3, 6, 7), "jpeg")}


# ----------------------------------------------------------------------------- what convert writes

def test_convert_writes_row_groups_and_the_unischema_when_petastorm_imports(tmp_path):
    src, images, labels = write_mnist(tmp_path / "src", n=12)
    result = cli("convert", "mnist", str(src), str(tmp_path / "ds"), "--no-spark", "--records-per-file", "5")
    assert result.returncode == 0, result.stderr
    meta = pq.read_schema(tmp_path / "ds" / "_common_metadata").metadata
    assert meta[ROW_GROUPS_KEY] == b'{"part-00000.parquet": 1, "part-00001.parquet": 1, "part-00002.parquet": 1}'
    assert (UNISCHEMA_KEY in meta) == petastorm_importable()


def test_petastorm_make_reader_reads_a_hovcaffe_convert_output(tmp_path):
    if not petastorm_importable():
        pytest.skip("petastorm is not importable (default profile); runs in the petastorm profile")
    from petastorm import make_reader

    src, images, labels = write_mnist(tmp_path / "src", n=30)
    result = cli("convert", "mnist", str(src), str(tmp_path / "ds"), "--no-spark", "--records-per-file", "10")
    assert result.returncode == 0, result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # petastorm 0.13 on pyarrow 14: deprecation noise only
        with make_reader(f"file://{tmp_path}/ds", num_epochs=1, shuffle_row_groups=False, workers_count=1,
                         reader_pool_type="dummy") as reader:
            rows = list(reader)
    np.testing.assert_array_equal(np.stack([r.data for r in rows]), images[:, None])
    assert [int(r.label) for r in rows] == labels.tolist()
