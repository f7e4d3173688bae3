"""Bad inputs give errors that name the file, the place and what was expected."""
from __future__ import annotations

from functools import partial

import pytest

from hovcaffe.caffe import io
from hovcaffe.caffe.check import check_net
from hovcaffe.errors import (NetDefinitionError, PrototxtError, UnsupportedLayerError,
                             UserInputError)
from hovcaffe.layers.registry import check_layer_type

GOOD = """name: "n"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 }
}
"""


def parse_error(text: str, tmp_path) -> PrototxtError:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(PrototxtError) as info:
        io.read_net(path)
    err = info.value
    assert isinstance(err, UserInputError) and err.exit_code == 2
    assert str(err).startswith(f"{path}:")
    return err


def test_truncated_file(tmp_path):
    cut = GOOD[: GOOD.index("kernel_size")]
    err = parse_error(cut, tmp_path)
    assert "unexpected end of file, expected '}'" in str(err)
    assert "'convolution_param {' opened at line 13" in str(err) and 'layer "conv1"' in str(err)
    assert err.line == cut.rstrip().count("\n") + 1


def test_unknown_field_names_field_message_and_layer(tmp_path):
    err = parse_error(GOOD.replace('  top: "conv1"\n', '  top: "conv1"\n  foo: 3\n'), tmp_path)
    assert (err.line, err.column) == (13, 3)
    assert str(err).endswith('net.prototxt:13:3: unknown field "foo" in LayerParameter (layer "conv1")')


def test_unknown_field_suggests_the_close_name(tmp_path):
    err = parse_error(GOOD.replace("num_output", "num_outputs"), tmp_path)
    assert 'unknown field "num_outputs" in ConvolutionParameter (layer "conv1"); did you mean "num_output"' \
        in str(err)


def test_fork_field_is_explained(tmp_path):
    text = GOOD + 'layer { name: "d" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param { sample_weights_test: true } }'
    assert "Bayesian SegNet" in str(parse_error(text, tmp_path))


def test_wrong_enum_value_lists_the_allowed_values(tmp_path):
    text = GOOD + 'layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" pooling_param { pool: MEAN } }'
    err = parse_error(text, tmp_path)
    assert "invalid value MEAN for pool" in str(err) and 'layer "p"' in str(err)
    assert "allowed values: MAX, AVE, STOCHASTIC" in str(err)


def test_syntax_error_position(tmp_path):
    err = parse_error(GOOD.replace('name: "conv1"', 'name "conv1"'), tmp_path)
    assert err.line == 9 and 'expected ":"' in str(err)


def test_unknown_layer_type_lists_supported_types():
    from hovcaffe.layers.registry import list_layers
    net = io.parse_net(GOOD.replace('"Convolution"', '"Convolutoin"'))
    with pytest.raises(UnsupportedLayerError) as info:
        check_net(net, "net.prototxt", check_type=check_layer_type)
    msg = str(info.value)
    assert "layer 'conv1' has type 'Convolutoin'" in msg and "Supported types:" in msg
    for name in list_layers():
        assert name in msg


def test_python_layer_is_refused_unless_allowed():
    net = io.parse_net("""layer { name: "py" type: "Python" top: "y"
        python_param { module: "mymod" layer: "MyLayer" } }""")
    with pytest.raises(UnsupportedLayerError, match=r"'py' has type 'Python' \(mymod.MyLayer\), which is refused"):
        check_net(net, check_type=check_layer_type)
    check_net(net, check_type=partial(check_layer_type, allow_python_layers=True))
    check_net(net)  # the structure alone


def test_fed_data_layers_are_not_looked_up_in_the_layer_registry():
    net = io.parse_net('layer { name: "w" type: "WindowData" top: "data" top: "label" }')
    check_net(net, check_type=check_layer_type)
    typo = io.parse_net('layer { name: "w" type: "WindowDat" top: "data" }')
    check_net(typo)  # without a type check only the structure is checked
    with pytest.raises(UnsupportedLayerError, match="'WindowDat', which hovcaffe does not support"):
        check_net(typo, check_type=check_layer_type)


def test_unknown_bottom():
    net = io.parse_net(GOOD.replace('bottom: "data"', 'bottom: "dta"'))
    with pytest.raises(NetDefinitionError, match=r"Unknown bottom blob 'dta' \(layer 'conv1', bottom index 0\)"):
        check_net(net)


def test_top_produced_twice():
    net = io.parse_net(GOOD + 'layer { name: "again" type: "ReLU" bottom: "data" top: "conv1" }')
    with pytest.raises(NetDefinitionError, match="Top blob 'conv1' produced by multiple sources"):
        check_net(net)


def test_in_place_is_fine_and_phase_views_are_separate():
    in_place = 'layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }'
    twice = """
        layer { name: "x" type: "ReLU" bottom: "conv1" top: "out" include { phase: TRAIN } }
        layer { name: "x" type: "ReLU" bottom: "conv1" top: "out" include { phase: TEST } }"""
    assert check_net(io.parse_net(GOOD + in_place + twice)) is None
    # the same two producers of "out" in one view are refused: the phase rules are what separate them
    with pytest.raises(NetDefinitionError, match="Top blob 'out' produced by multiple sources"):
        check_net(io.parse_net(GOOD + in_place + twice.replace("phase: TEST", "phase: TRAIN")))
    # an in-place top written by a layer other than its producer's chain is a second producer
    with pytest.raises(NetDefinitionError, match="Top blob 'conv1' produced by multiple sources"):
        check_net(io.parse_net(GOOD + in_place.replace('bottom: "conv1"', 'bottom: "data"')))


def test_loss_weight_count():
    net = io.parse_net(GOOD.replace('top: "conv1"\n', 'top: "conv1"\n loss_weight: 1 loss_weight: 0\n', 1))
    with pytest.raises(NetDefinitionError, match="2 loss_weight values for 1 tops"):
        check_net(net)


def test_include_and_exclude_both():
    net = io.parse_net(GOOD.replace('top: "conv1"\n', 'top: "conv1"\n include { phase: TRAIN } exclude { stage: "a" }\n', 1))
    with pytest.raises(NetDefinitionError, match="both include and exclude"):
        check_net(net)


def test_layer_without_type():
    net = io.parse_net('layer { name: "nothing" top: "x" }')
    with pytest.raises(NetDefinitionError, match="layer 'nothing' has no type"):
        check_net(net)


def test_caffemodel_blob_shape_that_does_not_match_the_net(tmp_path):
    import hovcaffe.weights as weights_mod
    from hovcaffe.errors import WeightsError
    from hovcaffe.net import CaffeNet
    import numpy as np

    net_param = io.parse_net(GOOD)
    saved = io.parse_net(GOOD.replace("num_output: 4", "num_output: 5"))
    conv = saved.layer[1]
    io.array_to_blob(np.zeros((5, 3, 3, 3), np.float32), conv.blobs.add())
    io.array_to_blob(np.zeros(5, np.float32), conv.blobs.add())
    path = tmp_path / "other.caffemodel"
    io.write_caffemodel(saved, path)
    net = CaffeNet(net_param, "TEST", source="net.prototxt")
    with pytest.raises(WeightsError) as info:
        weights_mod.load_caffemodel(net, str(path))
    msg = str(info.value)
    assert "conv1" in msg and "5, 3, 3, 3" in msg.replace("x", ", ") and "4, 3, 3, 3" in msg.replace("x", ", ")
