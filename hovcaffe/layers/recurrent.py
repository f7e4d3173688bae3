"""Recurrent layers RNN, LSTM and LSTMUnit, as Caffe unrolls them.

The rules: docs/caffe-semantics.md#recurrent-layers.

Inputs are time-major: `x (T, N, ...)`, `cont (T, N)` (0 starts a new sequence: the previous
state is multiplied by 0), an optional static input `x_static (N, ...)`, and with
`expose_hidden` the initial states as extra bottoms (final states become extra tops).
Without `expose_hidden` the final state of one forward is the initial state of the next one
(Caffe copies h_T/c_T into h_0/c_0 before each forward); that carried state is detached, i.e.
gradients are truncated at the batch boundary as in Caffe.

Blobs follow Caffe's unrolled-net order (learnable params in order of first appearance):
  RNN : W_xh (H, D), b_h (H), [W_xh_static (H, D_s)], W_hh (H, H), W_ho (H, H), b_o (H)
  LSTM: W_xc (4H, D), b_c (4H), [W_xc_static (4H, D_s)], W_hc (4H, H)
LSTM gates are stacked i, f, o, g (PyTorch's nn.LSTM uses i, f, g, o).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.common import count, filler_or, new_blob, shape_text
from hovcaffe.layers.registry import register_layer


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Caffe LSTMUnit step on (N, H) / (N, 4H) / (N,) tensors; returns (c, h).

    f is multiplied by `cont` (Caffe: f = cont == 0 ? 0 : cont * sigmoid(.)). For cont in {0, 1}
    the autograd gradient equals Caffe's closed form.
    """
    i, f, o, g = gates.chunk(4, dim=-1)
    i, o, g = torch.sigmoid(i), torch.sigmoid(o), torch.tanh(g)
    f = cont.unsqueeze(-1) * torch.sigmoid(f)
    c = f * c_prev + i * g
    return c, o * torch.tanh(c)


class _Recurrent(CaffeLayer):
    """Shared bottom/top bookkeeping, parameter creation and state carrying of RNN and LSTM."""

    no_grad_bottoms = (1,)  # the sequence-continuation indicators

    #: names of the recurrent states, in Caffe's bottom/top order
    state_names: tuple[str, ...] = ("h",)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        rp = param.recurrent_param
        if rp.num_output <= 0:
            raise self.param_error("recurrent_param.num_output must be positive")
        self.hidden = rp.num_output
        self.expose_hidden = rp.expose_hidden
        n_states = len(self.state_names) if self.expose_hidden else 0
        self.expect_bottoms(bottom_shapes, 2, 3 + n_states)
        self.static_input = len(bottom_shapes) > 2 + n_states
        if self.expose_hidden and len(bottom_shapes) < 2 + n_states:
            raise self.param_error(f"with expose_hidden it takes x, cont, [x_static], then "
                                   f"{n_states} initial state(s) ({', '.join(self.state_names)}_0)")
        self.expect_tops(1 + n_states)
        self.output_shapes(bottom_shapes)
        x, xs = bottom_shapes[0], (bottom_shapes[2] if self.static_input else None)
        self.input_dim = count(x, 2)
        self.static_dim = count(xs, 1) if xs is not None else 0
        w_fill = filler_or(rp, "weight_filler", 0.0)
        b_fill = filler_or(rp, "bias_filler", 0.0)
        self._make_blobs(w_fill, b_fill)
        for name in self.state_names:  # carried state when expose_hidden is false
            self.register_buffer(f"_{name}_state", torch.zeros(0), persistent=False)

    def blob(self, shape: Sequence[int], filler, what: str):
        return new_blob(shape, filler, what=f"{self.where()} {what}")

    def _make_blobs(self, w_fill, b_fill) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shapes(self, bottom_shapes):
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x) < 2:
            raise self.shape_error(f"x {shape_text(x)} must have at least 2 axes (T, N, ...)")
        t, n = x[0], x[1]
        if cont != (t, n):
            raise self.shape_error(f"cont {shape_text(cont)} must be (T, N) = {shape_text((t, n))}")
        state_shape = (1, n, self.hidden)
        offset = 2
        if self.static_input:
            xs = tuple(bottom_shapes[2])
            if len(xs) < 1 or xs[0] != n:
                raise self.shape_error(f"static input {shape_text(xs)} must be (N, ...) with N = {n}")
            offset = 3
        if self.expose_hidden:
            for name, s in zip(self.state_names, bottom_shapes[offset:]):
                if tuple(s) != state_shape:
                    raise self.shape_error(f"initial state {name}_0 {shape_text(s)} must be "
                                           f"{shape_text(state_shape)}")
        states = [state_shape] * len(self.state_names) if self.expose_hidden else []
        return [(t, n, self.hidden)] + states

    def _initial_states(self, x: torch.Tensor, given: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n = x.shape[1]
        if self.expose_hidden:
            return [s.reshape(n, self.hidden) for s in given]
        out = []
        for name in self.state_names:
            s = getattr(self, f"_{name}_state")
            if s.shape != (n, self.hidden) or s.dtype != x.dtype or s.device != x.device:
                s = x.new_zeros(n, self.hidden)  # first forward, or the batch changed
            out.append(s)
        return out

    def _finish(self, outputs: torch.Tensor, finals: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.expose_hidden:
            return [outputs] + [s.unsqueeze(0) for s in finals]
        for name, s in zip(self.state_names, finals):
            setattr(self, f"_{name}_state", s.detach())
        return [outputs]

    def _split_bottoms(self, bottoms):
        x, cont = bottoms[0], bottoms[1].detach()  # Caffe cannot backpropagate to cont
        static = bottoms[2] if self.static_input else None
        states = bottoms[3 if self.static_input else 2:]
        return x, cont.to(x.dtype), static, states


@register_layer("RNN")
class RNN(_Recurrent):
    """h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
    o_t = tanh(W_ho h_t + b_o); the top stacks o_t."""

    def _make_blobs(self, w_fill, b_fill):
        h = self.hidden
        self.blobs.append(self.blob((h, self.input_dim), w_fill, "W_xh"))
        self.blobs.append(self.blob((h,), b_fill, "b_h"))
        if self.static_input:
            self.blobs.append(self.blob((h, self.static_dim), w_fill, "W_xh_static"))
        self.blobs.append(self.blob((h, h), w_fill, "W_hh"))
        self.blobs.append(self.blob((h, h), w_fill, "W_ho"))
        self.blobs.append(self.blob((h,), b_fill, "b_o"))

    def forward(self, *bottoms):
        x, cont, static, states = self._split_bottoms(bottoms)
        w_xh, b_h, *rest = self.blobs
        w_static = rest.pop(0) if self.static_input else None
        w_hh, w_ho, b_o = rest
        t_steps, n = x.shape[:2]
        x_proj = F.linear(x.reshape(t_steps, n, -1), w_xh, b_h)
        static_proj = F.linear(static.reshape(n, -1), w_static) if static is not None else None
        (h,) = self._initial_states(x, states)
        hs = []
        for t in range(t_steps):
            pre = F.linear(cont[t].unsqueeze(-1) * h, w_hh) + x_proj[t]
            if static_proj is not None:
                pre = pre + static_proj
            h = torch.tanh(pre)
            hs.append(h)
        outputs = torch.tanh(F.linear(torch.stack(hs), w_ho, b_o))
        return self._finish(outputs, [h])

    def macs(self, bottom_shapes):
        t, n = bottom_shapes[0][:2]
        h = self.hidden
        return t * n * (self.input_dim * h + 2 * h * h) + n * self.static_dim * h


@register_layer("LSTM")
class LSTM(_Recurrent):
    """gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static], then an
    LSTMUnit step; the top stacks h_t."""

    state_names = ("h", "c")

    def _make_blobs(self, w_fill, b_fill):
        h4 = 4 * self.hidden
        self.blobs.append(self.blob((h4, self.input_dim), w_fill, "W_xc"))
        self.blobs.append(self.blob((h4,), b_fill, "b_c"))
        if self.static_input:
            self.blobs.append(self.blob((h4, self.static_dim), w_fill, "W_xc_static"))
        self.blobs.append(self.blob((h4, self.hidden), w_fill, "W_hc"))

    def forward(self, *bottoms):
        x, cont, static, states = self._split_bottoms(bottoms)
        w_xc, b_c, *rest = self.blobs
        w_static = rest.pop(0) if self.static_input else None
        (w_hc,) = rest
        t_steps, n = x.shape[:2]
        x_proj = F.linear(x.reshape(t_steps, n, -1), w_xc, b_c)
        static_proj = F.linear(static.reshape(n, -1), w_static) if static is not None else None
        h, c = self._initial_states(x, states)
        hs = []
        for t in range(t_steps):
            gates = F.linear(cont[t].unsqueeze(-1) * h, w_hc) + x_proj[t]
            if static_proj is not None:
                gates = gates + static_proj
            c, h = lstm_unit(c, gates, cont[t])
            hs.append(h)
        return self._finish(torch.stack(hs), [h, c])

    def macs(self, bottom_shapes):
        t, n = bottom_shapes[0][:2]
        h4 = 4 * self.hidden
        return t * n * (self.input_dim + self.hidden) * h4 + n * self.static_dim * h4


@register_layer("LSTMUnit")
class LSTMUnit(CaffeLayer):
    """One LSTM step: bottoms c_prev (1, N, H), gates (1, N, 4H), cont (1, N); tops c, h."""

    no_grad_bottoms = (2,)  # the continuation indicators

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 3)
        self.expect_tops(2)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        c, g, cont = (tuple(s) for s in bottom_shapes)
        if len(c) != 3 or c[0] != 1:
            raise self.shape_error(f"c_prev {shape_text(c)} must be (1, N, H)")
        n, h = c[1], c[2]
        if g != (1, n, 4 * h):
            raise self.shape_error(f"gates {shape_text(g)} must be (1, N, 4H) = {shape_text((1, n, 4 * h))}")
        if cont != (1, n):
            raise self.shape_error(f"cont {shape_text(cont)} must be (1, N) = {shape_text((1, n))}")
        return [c, c]

    def forward(self, c_prev, gates, cont):
        c, h = lstm_unit(c_prev[0], gates[0], cont.detach()[0].to(gates.dtype))
        return [c.unsqueeze(0), h.unsqueeze(0)]
