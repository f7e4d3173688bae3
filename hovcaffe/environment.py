"""Which of the packages hovcaffe uses are installed, which are missing, and how to add each.

`hovcaffe doctor` lists these. A missing *required* package is a failed check; a missing optional
one is listed with what it would add and its fix, and does not fail the doctor (a `pip install .`
of hovcaffe has no Horovod, no petastorm and no Spark Connect client, and is complete for
one-process work).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import warnings
from importlib import metadata


@dataclasses.dataclass
class Check:
    """One line of `hovcaffe doctor`: what was checked, whether it passed, and the fix if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclasses.dataclass(frozen=True)
class Package:
    """One package hovcaffe uses.

    Attributes:
        dist: distribution name (what pip installs).
        module: import name (what hovcaffe imports; importing it is the test).
        used_for: what needs it, shown when it is missing.
        minimum: lowest version that works (None: any).
        fix: how to install or upgrade it.
        optional: a missing optional package does not fail the doctor.
        label: the check's name (default: `dist`).
    """

    dist: str
    module: str
    used_for: str
    minimum: str | None = None
    fix: str = ""
    optional: bool = False
    label: str = ""

    def install_hint(self) -> str:
        if self.fix:
            return self.fix
        return f"pip install '{self.dist}>={self.minimum}'" if self.minimum else f"pip install {self.dist}"


PACKAGES: tuple[Package, ...] = (
    Package("numpy", "numpy", "everything", "1.26"),
    Package("pyarrow", "pyarrow", "datasets (Parquet)", "14"),
    Package("pyspark", "pyspark", "convert, features, the Spark ML stages, distributed training", "4.3"),
    Package("pandas", "pandas", "Spark's pandas/Arrow conversions", "2.2"),
    Package("opencv-python-headless", "cv2", "image decoding (Caffe's OpenCV behaviour)", "4.10"),
    Package("protobuf", "google.protobuf", "prototxt and .caffemodel files", "6.31.1"),
    Package("onnx", "onnx", "export -format onnx", "1.17"),
    Package("onnxruntime", "onnxruntime", "checking ONNX exports", "1.20"),
    Package("lmdb", "lmdb", "LMDB sources (convert lmdb)", "1.4"),
    Package("h5py", "h5py", "HDF5Data layers, .caffemodel.h5 / HDF5 solverstates", "3.10"),
    Package("safetensors", "safetensors", "hovcaffe checkpoints", "0.4"),
    Package("fsspec", "fsspec", "remote storage URLs", "2024.6"),
    Package("click", "click", "the command line", "8.1"),
    Package("rich", "rich", "progress display", "13"),
    Package("tqdm", "tqdm", "progress display", "4.66"),
    Package("matplotlib", "matplotlib", "hovcaffe plot", "3.8"),
    Package("pyyaml", "yaml", "job specs", "6"),
    Package("psutil", "psutil", "job locks", "5.9"),
    Package("pyarrow", "pyarrow", "Spark's Arrow transfers and Spark Connect (pyspark's floor)", "18",
            fix="pip install 'pyarrow>=18' (the petastorm profile stays on 14: use the default "
                "profile for Arrow transfers)", optional=True, label="pyarrow for Arrow transfers"),
    Package("grpcio", "grpc", "Spark Connect sessions (SparkSession.builder.remote)", "1.76",
            fix="pip install 'pyspark[connect]==<your pyspark version>'", optional=True),
    Package("zstandard", "zstandard", "Spark Connect sessions", "0.25",
            fix="pip install 'pyspark[connect]==<your pyspark version>'", optional=True),
    Package("petastorm", "petastorm", "writing Petastorm's Unischema key, so petastorm.make_reader "
            "reads hovcaffe datasets (hovcaffe reads Petastorm datasets without it)", "0.13.1",
            fix="HOVCAFFE_PROFILE=petastorm HOVCAFFE_VENV=.venv-petastorm scripts/install.sh "
                "(petastorm 0.13.1 imports only on pyarrow < 16, numpy 1.26)", optional=True),
    Package("tensorboard", "tensorboard", "TensorBoard event files next to the metrics CSV", None,
            fix="pip install tensorboard", optional=True),
    Package("s3fs", "s3fs", "s3:// URLs through fsspec (pyarrow's S3 works without it)", None,
            fix="pip install s3fs", optional=True),
)


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric parts of a version string (``"2.13.0+cpu"`` -> ``(2, 13, 0)``)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def check_package(pkg: Package) -> Check:
    """Import `pkg` and compare its version with the minimum."""
    label = pkg.label or pkg.dist
    needs = "" if pkg.minimum is None else f" (needs >= {pkg.minimum})"
    try:
        version = metadata.version(pkg.dist)
    except metadata.PackageNotFoundError:
        version = None
    problem = None
    if version is None:
        problem = f"not installed{needs}"
    elif pkg.minimum and version_tuple(version) < version_tuple(pkg.minimum):
        problem = f"{version} is installed{needs}"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(pkg.module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a native library that fails to load
            problem = f"{version} does not import: {type(exc).__name__}: {exc}"
    if problem is None:
        return Check(label, True, f"{version}" + (f" ({pkg.used_for})" if pkg.optional else ""))
    if pkg.optional:  # listed with its fix, but not a failure
        return Check(label, True, f"{problem}; optional, for {pkg.used_for}. To add it: "
                                  f"{pkg.install_hint()}")
    return Check(label, False, f"{problem}; needed for {pkg.used_for}", pkg.install_hint())


def package_checks() -> list[Check]:
    """One check per entry of :data:`PACKAGES`, in order."""
    return [check_package(p) for p in PACKAGES]
