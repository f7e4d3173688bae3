"""Loading a saved CaffeEstimator never imports what the folder names (real local Spark).

pyspark's own reader imports the module the metadata's "class" names and calls it; a folder
saved for another class - or crafted to name any installed function - is refused first."""
from __future__ import annotations

import json
import sys

import pytest

from hovcaffe.errors import UserInputError
from hovcaffe.ml import CaffeEstimator

pytestmark = [pytest.mark.spark]


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[1]", app_name="test_ml_persistence_safety")
    yield session


def test_saved_estimator_loads_with_its_params(spark, tmp_path):
    est = CaffeEstimator(solver="s.prototxt", modelDir="/tmp/m", baseLr=0.05, numProc=1)
    est.write().overwrite().save(str(tmp_path / "est"))
    loaded = CaffeEstimator.load(str(tmp_path / "est"))
    assert loaded.uid == est.uid
    assert (loaded.getSolver(), loaded.getBaseLr(), loaded.getNumProc()) == ("s.prototxt", 0.05, 1)


def test_a_folder_naming_another_class_is_refused_before_anything_is_imported(spark, tmp_path):
    CaffeEstimator(solver="s.prototxt").write().overwrite().save(str(tmp_path / "est"))
    meta_file = next((tmp_path / "est" / "metadata").glob("part-*"))
    meta = json.loads(meta_file.read_text())
    # a module that is importable but not yet imported: pyspark's reader would import it
    target = "wsgiref.simple_server"
    assert target not in sys.modules
    meta["class"] = f"{target}.demo_app"
    meta_file.write_text(json.dumps(meta) + "\n")
    for crc in (tmp_path / "est" / "metadata").glob(".*.crc"):  # Hadoop's checksums of the old text
        crc.unlink()
    with pytest.raises(UserInputError, match="not a hovcaffe.ml.estimator.CaffeEstimator"):
        CaffeEstimator.load(str(tmp_path / "est"))
    assert target not in sys.modules
