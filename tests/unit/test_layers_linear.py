"""InnerProduct and Embed against NumPy (docs/caffe-semantics.md#innerproduct-and-embed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.errors import ShapeError
from layer_helpers import layer, rng, tensor


@pytest.mark.parametrize("axis,shape,k,out", [
    (1, (2, 3, 4, 5), 60, (2, 7)),
    (2, (2, 3, 4, 5), 20, (2, 3, 7)),
    (-1, (2, 3, 4), 4, (2, 3, 7)),
    (1, (5, 6), 6, (5, 7)),
])
def test_inner_product_flattens_from_axis(axis, shape, k, out):
    x = rng(1).randn(*shape).astype(np.float32)
    lay = layer(f'type: "InnerProduct" inner_product_param {{ num_output: 7 axis: {axis} '
                'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [shape])
    w, b = lay.blobs[0].detach().numpy(), lay.blobs[1].detach().numpy()
    assert w.shape == (7, k)
    want = x.reshape(int(np.prod(out[:-1])), k) @ w.T + b
    assert lay.output_shapes([shape]) == [out]
    np.testing.assert_allclose(lay(tensor(x))[0].detach().numpy(), want.reshape(out), rtol=1e-5,
                               atol=1e-5)


def test_inner_product_transpose_and_no_bias_and_zero_default_fillers():
    x = rng(2).randn(3, 4).astype(np.float32)
    lay = layer('type: "InnerProduct" inner_product_param { num_output: 5 transpose: true '
                'bias_term: false }', [x.shape])
    assert len(lay.blobs) == 1 and tuple(lay.blobs[0].shape) == (4, 5)
    assert torch.all(lay.blobs[0] == 0)
    w = rng(3).randn(4, 5).astype(np.float32)
    with torch.no_grad():
        lay.blobs[0].copy_(torch.from_numpy(w))
    np.testing.assert_allclose(lay(tensor(x))[0].detach().numpy(), x @ w, rtol=1e-5)
    with pytest.raises(ShapeError, match="incompatible"):
        lay.output_shapes([(3, 6)])


def test_embed_truncates_float_indices_and_gives_them_no_gradient():
    lay = layer('type: "Embed" embed_param { num_output: 3 input_dim: 6 '
                'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [(2, 3)])
    w, b = lay.blobs[0].detach().numpy(), lay.blobs[1].detach().numpy()
    assert w.shape == (6, 3)
    idx = np.array([[0.0, 5.9, 2.2], [3.0, 1.99, 4.5]], np.float32)
    xt = tensor(idx, grad=True)
    y = lay(xt)[0]
    assert lay.output_shapes([(2, 3)]) == [(2, 3, 3)]
    np.testing.assert_allclose(y.detach().numpy(), w[idx.astype(int)] + b, rtol=1e-6)
    y.sum().backward()
    assert xt.grad is None
    counts = np.bincount(idx.astype(int).ravel(), minlength=6)[:, None]
    np.testing.assert_allclose(lay.blobs[0].grad.numpy(), np.repeat(counts, 3, axis=1))
    with pytest.raises(ShapeError, match="out of range"):
        lay(tensor([[6.0, 0, 0], [0, 0, 0]]))
