"""Caffe layers as PyTorch modules, one module per family, registered by Caffe type.

Importing this package registers every family (explicit imports, no star imports).
"""
from hovcaffe.layers.registry import get_builder, list_layers, register_layer  # noqa: F401
from hovcaffe.layers import structural  # noqa: F401,E402  (shape/selection layers)
from hovcaffe.layers import loss  # noqa: F401,E402  (Softmax, losses, Accuracy)
from hovcaffe.layers import recurrent  # noqa: F401,E402  (RNN, LSTM, LSTMUnit)
from hovcaffe.layers import data_layers  # noqa: F401,E402  (DummyData, HDF5Output)
from hovcaffe.layers import conv  # noqa: F401,E402  (Convolution, Deconvolution, Im2col)
from hovcaffe.layers import pooling  # noqa: F401,E402  (Pooling, SPP)
from hovcaffe.layers import lrn  # noqa: F401,E402  (LRN)
from hovcaffe.layers import linear  # noqa: F401,E402  (InnerProduct, Embed)
from hovcaffe.layers import normalization  # noqa: F401,E402  (BatchNorm, Scale, Bias, MVN)
from hovcaffe.layers import neuron  # noqa: F401,E402  (ReLU ... Dropout)
from hovcaffe.layers import mobile  # noqa: F401,E402  (ConvolutionDepthwise, ShuffleChannel, ReLU6, Axpy)
from hovcaffe.layers import segmentation  # noqa: F401,E402  (BN, Upsample, Interp)
from hovcaffe.layers import ssd_heads  # noqa: F401,E402  (Normalize, Permute)
from hovcaffe.layers import smooth_l1  # noqa: F401,E402  (SmoothL1Loss)
from hovcaffe.layers import detection  # noqa: F401,E402  (PriorBox, DetectionOutput)
from hovcaffe.layers import multibox  # noqa: F401,E402  (MultiBoxLoss)
from hovcaffe.layers import detection_eval  # noqa: F401,E402  (DetectionEvaluate)
from hovcaffe.layers import roi  # noqa: F401,E402  (ROIPooling, PSROIPooling)
from hovcaffe.layers import proposal  # noqa: F401,E402  (Proposal; py-faster-rcnn's ProposalLayer)
