"""MLWriter / MLReader for stages that own files (CaffeModel): Params as JSON, files as files.

Layout of a saved stage at ``path`` (as ``pyspark.ml`` lays out any stage, plus one folder)::

    path/metadata/part-00000   DefaultParamsWriter JSON: class, uid, paramMap, defaultParamMap,
                               and "hovcaffe": {"format": 1, "files": {name: {bytes, sha256}}}
    path/files/                the model's files (``hovcaffe.ml.artifacts``), byte for byte

The files are written where Spark writes the metadata: ``path`` is qualified with the session's
Hadoop configuration (so a bare path on a cluster whose default filesystem is HDFS lands on HDFS
too; under Spark Connect see :func:`qualified_url`) and then written through
``hovcaffe.data.storage``. This works inside ``Pipeline`` /
``PipelineModel`` persistence, which calls ``stage.write().save(stage_path)`` for Python stages.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any, Type

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from hovcaffe.errors import UserInputError
from hovcaffe.ml.artifacts import ModelFiles
from hovcaffe.utils.paths import is_url
from hovcaffe.utils.spark import is_connect

FILES_DIR = "files"
META_KEY = "hovcaffe"
FORMAT = 1


def qualified_url(path: str, spark) -> str:
    """`path` as the URL Spark's Hadoop filesystem resolves it to (``file:/tmp/m``, ``hdfs://...``).

    A Spark Connect client cannot ask the server's Hadoop configuration: there a URL stays as it
    is and a bare path is a path of this machine (give a full URL for a server elsewhere).
    """
    if is_connect(spark):
        return path if is_url(path) else "file:" + os.path.abspath(path)
    sc = spark.sparkContext
    hpath = sc._jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(sc._jsc.hadoopConfiguration())
    return str(fs.makeQualified(hpath).toString())


class FilesStageWriter(MLWriter):
    """Saves a stage's Params (JSON metadata) and its :class:`ModelFiles` next to them."""

    def __init__(self, instance: Any):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        files: ModelFiles = self.instance.modelFiles
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata={
            META_KEY: {"format": FORMAT, "files": files.manifest()}})
        files.write(posixpath.join(qualified_url(path, self.sparkSession), FILES_DIR))


class FilesStageReader(MLReader):
    """Loads what :class:`FilesStageWriter` saved into a new instance of `cls`."""

    def __init__(self, cls: Type[Any]):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        extra = metadata.get(META_KEY)
        if metadata["class"] != expected or not isinstance(extra, dict):
            raise UserInputError(f"{path} holds a saved {metadata['class']}, not a {expected}")
        if extra.get("format", 0) > FORMAT:
            raise UserInputError(f"{path} was saved by a newer hovcaffe (format {extra['format']})")
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        folder = posixpath.join(qualified_url(path, self.sparkSession), FILES_DIR)
        instance._setModelFiles(ModelFiles.read(folder, extra["files"]))
        return instance


class CheckedParamsReader(DefaultParamsReader):
    """`DefaultParamsReader` that checks the saved class before importing anything.

    pyspark's reader imports the module that the metadata's ``class`` names and calls it, so a
    crafted folder could make ``CaffeEstimator.load`` import and call any installed code. This
    reader only builds `cls`, and refuses a folder that names anything else.
    """

    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata.get("class") != expected:
            raise UserInputError(f"{path} holds a saved {metadata.get('class')!r}, not a {expected} "
                                 "(nothing was imported)")
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
