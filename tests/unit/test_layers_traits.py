"""Layer traits (class attributes the net reads) agree with Caffe's layer headers.

Expected values are read off BVLC Caffe's include/caffe/layers/*.hpp: the LossLayer subclasses,
the layers whose Backward_cpu is NOT_IMPLEMENTED or empty, and each AllowForceBackward override.
"""
from __future__ import annotations

import pytest

from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.registry import get_builder, list_layers

# class SoftmaxWithLossLayer : public LossLayer<Dtype>, ... (loss_layer.hpp's subclasses).
CAFFE_LOSS_TYPES = {"SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss",
                    "InfogainLoss", "ContrastiveLoss", "MultinomialLogisticLoss"}
# Backward_cpu { NOT_IMPLEMENTED; } (threshold_layer.hpp, argmax_layer.hpp, accuracy_layer.hpp).
CAFFE_NO_BACKWARD = {"Threshold", "ArgMax", "Accuracy"}
# AllowForceBackward(bottom_index) returning false for these bottoms.
CAFFE_NO_FORCED_BOTTOMS = {
    "SoftmaxWithLoss": (1,), "SigmoidCrossEntropyLoss": (1,), "HingeLoss": (1,),
    "InfogainLoss": (1, 2), "MultinomialLogisticLoss": (1,), "ContrastiveLoss": (2,),
    "RNN": (1,), "LSTM": (1,), "LSTMUnit": (2,), "Embed": (0,), "BatchReindex": (1,),
}
BVLC_FAMILIES = {"conv", "data_layers", "linear", "loss", "lrn", "neuron", "normalization", "pooling",
                 "recurrent", "structural"}


def layer_class(caffe_type: str) -> type[CaffeLayer]:
    builder = get_builder(caffe_type)
    assert isinstance(builder, type) and issubclass(builder, CaffeLayer), caffe_type
    return builder


@pytest.mark.parametrize("caffe_type", [t for f in sorted(BVLC_FAMILIES) for t in list_layers(f)])
def test_traits_of_each_bvlc_layer(caffe_type):
    cls = layer_class(caffe_type)
    assert cls.is_loss == (caffe_type in CAFFE_LOSS_TYPES)
    assert cls.has_backward == (caffe_type not in CAFFE_NO_BACKWARD)
    assert cls.no_grad_bottoms == CAFFE_NO_FORCED_BOTTOMS.get(caffe_type, ())

