"""hovcaffe: Caffe prototxt networks trained as PyTorch modules, distributed with Horovod on Spark."""

__version__ = "0.1.0"
