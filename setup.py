"""hovcaffe: train Caffe-defined networks with PyTorch + Horovod on Spark.

`pip install .` (or the wheel) installs hovcaffe and its runtime dependencies from
requirements/runtime.txt: everything but distributed training runs then (train on one process,
test, time, forward, inspect, export, convert). Horovod is not on PyPI in a form that builds
against current torch; scripts/install.sh builds and caches it (the `horovod` extra only adds its
Python dependencies). scripts/install.sh also installs the pinned profiles the tests run on.
"""
from pathlib import Path

from setuptools import find_packages, setup

REQUIREMENTS = Path(__file__).resolve().parent / "requirements"


def requirements(name: str) -> list[str]:
    """The requirement lines of requirements/<name> (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in (REQUIREMENTS / name).read_text().splitlines())
    return [line for line in lines if line]


setup(
    name="hovcaffe",
    version="0.1.0",
    description="Distributed training of Caffe prototxt networks on Spark with PyTorch and Horovod",
    packages=find_packages(include=["hovcaffe", "hovcaffe.*"]),
    package_data={"hovcaffe.caffe": ["caffe.proto"]},
    python_requires=">=3.10",
    install_requires=requirements("runtime.txt"),
    extras_require={
        # Horovod's Python dependencies; the Horovod wheel itself is built by scripts/install.sh.
        "horovod": requirements("horovod.txt"),
        "connect": ["pyspark[connect]>=4.3"],
    },
    entry_points={"console_scripts": ["hovcaffe=hovcaffe.cli:main"]},
)
