"""Run one prototxt through hovcaffe and through OpenCV's Caffe importer on the same weights.

The weights are hovcaffe's random fills written as a .caffemodel by hovcaffe's own writer;
OpenCV reads prototxt and caffemodel with its own parser and runs its own layer code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hovcaffe.caffe.io import parse_net
from hovcaffe.export import to_onnx_bytes
from hovcaffe.net import CaffeNet
from hovcaffe.weights import save_caffemodel


def dims(shape) -> str:
    return " ".join(f"dim: {d}" for d in shape)


def one_layer(type_: str, param: str, shape) -> str:
    """A net of one `type_` layer "l" on an input "data" of `shape`."""
    return (f'input: "data" input_shape {{ {dims(shape)} }}\n'
            f'layer {{ name: "l" type: "{type_}" bottom: "data" top: "l" {param} }}\n')


def build(text: str, seed: int = 0, **kw) -> CaffeNet:
    torch.manual_seed(seed)
    return CaffeNet(parse_net(text, "net.prototxt"), "TEST", **kw).eval()


def randomize(net: CaffeNet, seed: int = 1) -> None:
    """Give every blob random values (fillers such as constant 0 would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def run_hovcaffe(net: CaffeNet, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return [blobs[o].numpy() for o in outputs]


def run_opencv(text: str, net: CaffeNet, inputs: dict[str, np.ndarray], outputs: list[str],
               tmp: Path) -> list[np.ndarray]:
    import cv2
    proto, model = tmp / "net.prototxt", tmp / "net.caffemodel"
    proto.write_text(text)
    save_caffemodel(net, model)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name, value in inputs.items():
        cvnet.setInput(value, name)
    return [np.asarray(o) for o in cvnet.forward(outputs)]


def run_onnxruntime(net: CaffeNet, inputs: dict[str, np.ndarray], outputs: list[str]
                    ) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(to_onnx_bytes(net, outputs=outputs),
                                providers=["CPUExecutionProvider"])
    return sess.run(outputs, inputs)


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the error relative to the output's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.abs(b).max())
    assert scale > 0 and (b.size == 1 or float(b.std()) > 0), "a constant reference proves nothing"
    return float(np.abs(a - b).max() / scale)
