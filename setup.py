"""hovcaffe: train Caffe-defined networks with PyTorch + Horovod on Spark.

Install the whole stack with scripts/install.sh (it pins torch, builds Horovod
and installs petastorm without its broken dependency pins); this file only
describes the package itself.
"""
from setuptools import find_packages, setup

setup(
    name="hovcaffe",
    version="0.1.0",
    description="Distributed training of Caffe prototxt networks on Spark with PyTorch and Horovod",
    packages=find_packages(include=["hovcaffe", "hovcaffe.*"]),
    package_data={"hovcaffe.caffe": ["caffe.proto"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["hovcaffe=hovcaffe.cli:main"]},
)
