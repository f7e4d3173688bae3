"""CaffeNet: a Caffe NetParameter as a trainable torch module (docs/caffe-semantics.md#the-net).

The net is a DAG over named blobs. Building it walks the phase-filtered layers in file order,
builds each through the layer registry and propagates shapes with `output_shapes` (no tensors
are touched). Every produced blob version gets a *slot*; an in-place top (top[i] == bottom[i])
gets a new slot under the same name, so the forward pass is pure dataflow (no torch in-place
ops) and Caffe's automatic Split layers are just fan-out that autograd sums.

Net inputs are the tops of `Input` layers and of data layers (Data, ImageData, HDF5Data,
MemoryData, WindowData, CoSData), which the caller (or hovcaffe's data feeds) supplies.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

import hovcaffe.layers  # noqa: F401  (registers every layer family)
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.check import check_net
from hovcaffe.caffe.data_layer_types import FED_TYPES
from hovcaffe.caffe.shapes import declared_top_shapes
from hovcaffe.caffe.state import filter_net, merged_state, phase_value
from hovcaffe.errors import NetDefinitionError, ShapeError, UserInputError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.fusion import FusedBatchNormScale, can_fuse
from hovcaffe.layers.python_layers import builtin_type
from hovcaffe.layers.registry import get_builder

log = logging.getLogger(__name__)


class LearnableParam(NamedTuple):
    """One solver-visible parameter (an owner, never a sharer), in Caffe's learnable order."""

    name: str            # "<layer>/<blob index>"
    param: nn.Parameter
    lr_mult: float
    decay_mult: float


class _Step(NamedTuple):
    """One precomputed entry of the execution plan (slot indices, not names)."""

    module: CaffeLayer | FusedBatchNormScale
    bottoms: tuple[int, ...]
    tops: tuple[int, ...]
    detach: tuple[bool, ...] | None   # None: nothing to detach


@dataclass
class _Owner:
    layer: str
    index: int
    lr_mult: float
    has_lr: bool
    decay_mult: float
    has_decay: bool
    shape: tuple[int, ...]


class CaffeNet(nn.Module):
    """A phase view (TRAIN/TEST) of a Caffe net as an nn.Module.

    Args:
        net_param: the upgraded NetParameter (e.g. from `hovcaffe.caffe.io.read_net`).
        phase: caffe_pb2.TRAIN / TEST, or "TRAIN" / "TEST".
        state: extra NetState (level, stages) merged over the net file's own `state`.
        input_shapes: shapes of net inputs by blob name; they override the prototxt and are
            required for data-layer tops whose shape only the data knows (LMDB images, HDF5).
        source: the prototxt path, for error messages and relative HDF5 source lists.
        allow_python_layers: build `Python` layers whose `module.layer` is a CaffeLayer
            subclass (a PyTorch replacement); without it they are refused.

    Attributes:
        layers: nn.ModuleDict of the built layers in execution order, keyed by layer name
            (a repeated name gets "#2", "#3"; '.' becomes U+2024; see `layer(name)`).
        input_names / data_layers / output_names: net inputs (Input and data-layer tops, in
            order), the data-layer LayerParameters, Caffe's net outputs (sorted, as Caffe does).
        blob_shapes: build-time shape of every blob (final version).
        loss_weights: blob name -> loss_weight of every weighted top.
        versions: blob name -> slots of its versions (in-place writes add one); `run()` returns
            the tensors by slot. layer_tops: layer key -> slots of its tops.
        force_backward: the prototxt's force_backward (inputs then deserve gradients).
        fused: (BatchNorm key, Scale key) of the pairs that `forward()` and `run(outputs=...)`
            run as one F.batch_norm call (layers/fusion.py); `run()` without outputs runs
            every layer apart, as it returns every blob version.

    Raises:
        NetDefinitionError / ShapeError / UnsupportedLayerError: with the layer and the reason.
    """

    def __init__(self, net_param: caffe_pb2.NetParameter, phase: int | str, *,
                 state: caffe_pb2.NetState | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 source: str = "", allow_python_layers: bool = False) -> None:
        super().__init__()
        self.phase = phase_value(phase)
        self.source = source
        self.allow_python_layers = allow_python_layers
        st = merged_state(self.phase, net_param, state)
        st.phase = self.phase
        # Caffe's Net::Init errors (unknown bottoms, tops produced twice, loss_weight and
        # propagate_down counts) come from the one validator, before anything is built.
        check_net(net_param, source, state=st)
        self.net_param = filter_net(net_param, st, source)
        self.force_backward = bool(self.net_param.force_backward)
        self.layers = nn.ModuleDict()
        self.input_names: list[str] = []
        self.data_layers: list[caffe_pb2.LayerParameter] = []
        self.loss_weights: dict[str, float] = {}
        self.versions: dict[str, list[int]] = {}
        self.layer_tops: dict[str, list[int]] = {}      # module key -> top slots (inputs too)
        self.layer_keys: list[str] = []                 # module key of each net_param.layer
        self._first_key: dict[str, str] = {}
        self._slot_shapes: list[Shape] = []
        self._slot_names: list[str] = []
        self._inputs: list[tuple[str, int]] = []
        self._steps: list[_Step] = []
        self._fused_steps: list[_Step] = []
        self.fused: list[tuple[str, str]] = []
        self._owners: list[_Owner] = []
        self._build(dict(input_shapes or {}))

    # ------------------------------------------------------------------ build

    def _where(self, lp: caffe_pb2.LayerParameter) -> str:
        head = f"{self.source}: " if self.source else ""
        return f"{head}layer {lp.name!r} ({lp.type})"

    def _new_slot(self, name: str, shape: Shape) -> int:
        slot = len(self._slot_shapes)
        self._slot_shapes.append(tuple(int(d) for d in shape))
        self._slot_names.append(name)
        self.versions.setdefault(name, []).append(slot)
        return slot

    def _build(self, input_shapes: dict[str, Sequence[int]]) -> None:
        current: dict[str, int] = {}
        available: set[str] = set()
        owners_by_name: dict[str, _Owner] = {}
        for lp in self.net_param.layer:
            key = self._unique_key(lp.name)
            self.layer_keys.append(key)
            if lp.type == "Input" or lp.type in FED_TYPES:
                self._add_inputs(lp, key, input_shapes, current, available)
                continue
            bottoms = []
            for b in lp.bottom:
                bottoms.append(current[b])
                available.discard(b)
            bshapes = [self._slot_shapes[s] for s in bottoms]
            layer_phase = lp.phase if lp.HasField("phase") else self.phase
            module = self._build_layer(lp, bshapes, layer_phase)
            tops = list(lp.top)
            if not tops and module.is_loss:
                tops = [f"({lp.name} top 0)"]   # Caffe's anonymous loss top
            shapes = module.output_shapes(bshapes)
            if len(shapes) != len(tops):
                raise NetDefinitionError(f"{self._where(lp)}: produces {len(shapes)} tops but "
                                         f"the prototxt names {len(tops)}")
            top_slots = []
            for t, shp in zip(tops, shapes):
                slot = self._new_slot(t, shp)
                current[t] = slot
                top_slots.append(slot)
                if lp.top:
                    available.add(t)
            self._set_loss_weights(lp, tops, module)
            self._wire_params(lp, key, module, owners_by_name)
            self.layers[key] = module
            self.layer_tops[key] = top_slots
            self._steps.append(_Step(module, tuple(bottoms), tuple(top_slots),
                                     self._detach_flags(lp, module)))
        self.output_names = sorted(available)   # Caffe keeps them in a std::set
        self.blob_shapes = {n: self._slot_shapes[s[-1]] for n, s in self.versions.items()}
        self._final = [(n, s[-1]) for n, s in self.versions.items()]
        self._fused_steps = self._fused_plan()

    def _fused_plan(self) -> list[_Step]:
        """The steps with each BatchNorm -> Scale pair that may fuse replaced by one step.

        A pair fuses when the Scale is the only reader of the BatchNorm's top and that top is
        not the final version of its blob (the usual in-place pair), so no caller can ask for
        it: `forward()` and `run(outputs=...)` only return final versions. Neither step may
        detach a bottom (propagate_down), and the layers must fit `can_fuse`.
        """
        readers: dict[int, int] = {}
        for step in self._steps:
            for b in step.bottoms:
                readers[b] = readers.get(b, 0) + 1
        final = {s[-1] for s in self.versions.values()}
        keys = {id(m): k for k, m in self.layers.items()}
        producer = {step.tops[0]: step for step in self._steps if len(step.tops) == 1}
        fused_bn: set[int] = set()
        plan: list[_Step] = []
        for step in self._steps:
            bn = producer.get(step.bottoms[0]) if len(step.bottoms) == 1 else None
            if (bn is not None and len(bn.bottoms) == 1 and bn.detach is None
                    and step.detach is None and readers[bn.tops[0]] == 1
                    and bn.tops[0] not in final and can_fuse(bn.module, step.module)):
                fused_bn.add(id(bn))
                plan.append(_Step(FusedBatchNormScale(bn.module, step.module), bn.bottoms,
                                  step.tops, None))
                self.fused.append((keys[id(bn.module)], keys[id(step.module)]))
            else:
                plan.append(step)
        if self.fused:
            log.debug("BatchNorm+Scale fused: %s", ", ".join(f"{b}+{s}" for b, s in self.fused))
        # A fused step stands where its Scale stood; the BatchNorm's own step leaves the plan.
        return [step for step in plan if id(step) not in fused_bn]

    def _unique_key(self, name: str) -> str:
        """The ModuleDict key of a layer: its name, made unique and free of '.'.

        Caffe accepts duplicate layer names; the first layer of a name keeps it (that is the
        one Caffe's CopyTrainedLayersFrom fills), later ones get "#2", "#3", ... A name that
        is an attribute of the ModuleDict itself ("eval", "train", "keys", ...) cannot be a
        key there, so it gets a suffix too; the layer keeps its Caffe name everywhere else.
        """
        base = name.replace(".", "\u2024") or "(unnamed)"
        key, n = base, 1
        while key in self.layer_tops or hasattr(self.layers, key):
            n += 1
            key = f"{base}#{n}"
        if name not in self._first_key:
            self._first_key[name] = key
        return key

    def layer_key(self, name: str) -> str | None:
        """The `layers` key of the first layer called `name` (Caffe's name lookup)."""
        return self._first_key.get(name)

    def layer(self, name: str) -> CaffeLayer | None:
        """The built module of the first layer called `name`, if it has one."""
        key = self._first_key.get(name)
        return self.layers[key] if key is not None and key in self.layers else None

    def _add_inputs(self, lp, key, input_shapes, current, available) -> None:
        declared = declared_top_shapes(lp) or [None] * len(lp.top)
        for top, shape in zip(lp.top, declared):
            if top in input_shapes:
                shape = tuple(int(d) for d in input_shapes[top])
            elif shape is None or (lp.type != "Input" and not all(shape)):
                shape = _hdf5_shape(lp, top, self.source) if lp.type == "HDF5Data" else None
            if shape is None:
                raise ShapeError(f"{self._where(lp)}: the shape of top {top!r} is not known from "
                                 f"the prototxt; give it with --input-shape {top}=N,C,H,W "
                                 f"(Python: input_shapes={{{top!r}: (N, C, H, W)}})")
            slot = self._new_slot(top, shape)
            current[top] = slot
            available.add(top)
            self._inputs.append((top, slot))
            self.input_names.append(top)
        self.layer_tops[key] = [current[t] for t in lp.top]
        if lp.type in FED_TYPES:
            self.data_layers.append(lp)

    def _build_layer(self, lp, bshapes: list[Shape], phase: int) -> CaffeLayer:
        caffe_type = lp.type
        if caffe_type == "Python":
            caffe_type = builtin_type(lp.python_param)   # a well-known module built in
            if caffe_type is None:
                return self._python_layer(lp, bshapes, phase)
        builder = get_builder(caffe_type, lp.name, self.source)
        try:
            return builder(lp, bshapes, phase)
        except (NetDefinitionError, ShapeError) as exc:
            if self.source and self.source not in str(exc):
                raise type(exc)(f"{self.source}: {exc}") from None
            raise

    def _python_layer(self, lp, bshapes, phase) -> CaffeLayer:
        where = self._where(lp)
        if not self.allow_python_layers:
            get_builder("Python", lp.name, self.source)   # raises the registry's refusal
        module_name, cls_name = lp.python_param.module, lp.python_param.layer
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise NetDefinitionError(f"{where}: cannot import {module_name}.{cls_name}: {exc}"
                                     ) from None
        if not (isinstance(cls, type) and issubclass(cls, CaffeLayer)):
            raise NetDefinitionError(f"{where}: {module_name}.{cls_name} is not a hovcaffe "
                                     "CaffeLayer; Caffe's numpy Python layers cannot run here, "
                                     "write a PyTorch replacement")
        return cls(lp, bshapes, phase)

    def _set_loss_weights(self, lp, tops: list[str], module: CaffeLayer) -> None:
        weights = list(lp.loss_weight)
        if not weights and module.is_loss:
            weights = [1.0] + [0.0] * (len(tops) - 1)
        for t, w in zip(tops, weights):
            if w != 0.0:
                self.loss_weights[t] = self.loss_weights.get(t, 0.0) + float(w)

    def _detach_flags(self, lp, module: CaffeLayer) -> tuple[bool, ...] | None:
        n = len(lp.bottom)
        never = module.no_grad_bottoms
        flags = []
        for i in range(n):
            if not module.has_backward or i in never:
                flags.append(True)
            elif len(lp.propagate_down) and not lp.propagate_down[i]:
                # force_backward overrides propagate_down: false where the layer allows it.
                flags.append(not self.force_backward)
            else:
                flags.append(False)
        return tuple(flags) if any(flags) else None

    def _wire_params(self, lp, key: str, module: CaffeLayer, owners: dict[str, _Owner]) -> None:
        where = self._where(lp)
        specs = list(lp.param)
        if len(specs) > len(module.blobs):
            raise NetDefinitionError(f"{where}: {len(specs)} param specs for "
                                     f"{len(module.blobs)} parameter blobs")
        frozen = set(module.frozen_blobs)
        for i in range(len(module.blobs)):
            spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
            lr = 0.0 if i in frozen else float(spec.lr_mult)
            has_lr = i in frozen or spec.HasField("lr_mult")
            shape = tuple(module.blobs[i].shape)
            owner = owners.get(spec.name) if spec.name else None
            if owner is None:
                own = _Owner(key, i, lr, has_lr, float(spec.decay_mult),
                             spec.HasField("decay_mult"), shape)
                self._owners.append(own)
                if spec.name:
                    owners[spec.name] = own
                module.blobs[i].requires_grad_(lr != 0.0)
                continue
            self._share(lp, i, spec, owner, module, shape)

    def _share(self, lp, i, spec, owner: _Owner, module, shape) -> None:
        where = self._where(lp)
        permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
        if shape != owner.shape:
            if permissive and int(np.prod(shape)) == int(np.prod(owner.shape)):
                raise NetDefinitionError(f"{where}: PERMISSIVE sharing of param {spec.name!r} with "
                                         f"a different shape ({list(shape)} vs owner "
                                         f"{list(owner.shape)}) is not supported")
            raise ShapeError(f"{where}: cannot share param {spec.name!r} owned by layer "
                             f"{owner.layer!r}: owner shape {list(owner.shape)}, sharing layer "
                             f"shape {list(shape)}")
        for field, has, value in (("lr_mult", "has_lr", "lr_mult"),
                                  ("decay_mult", "has_decay", "decay_mult")):
            if spec.HasField(field):
                if getattr(owner, has) and getattr(owner, value) != getattr(spec, field):
                    raise NetDefinitionError(f"{where}: shared param {spec.name!r} has mismatched "
                                             f"{field} ({getattr(spec, field)} vs "
                                             f"{getattr(owner, value)} in {owner.layer!r})")
                if not getattr(owner, has):
                    setattr(owner, has, True)
                    setattr(owner, value, float(getattr(spec, field)))
        owner_param = self.layers[owner.layer].blobs[owner.index] if owner.layer in self.layers \
            else module.blobs[owner.index]
        owner_param.requires_grad_(owner.lr_mult != 0.0)
        module.blobs[i] = owner_param

    # ------------------------------------------------------------------ run

    def run(self, inputs: Mapping[str, torch.Tensor],
            outputs: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Forward pass returning every blob version, indexed by slot (see `versions`).

        With `outputs`, only the layers those blobs depend on run (the other slots stay None):
        exporting a detection net's heads must not run its data-dependent post-process; fused
        BatchNorm+Scale pairs (`fused`) then run as one step and leave the BatchNorm's slot None.
        """
        return self._run(inputs, self._steps_for(outputs))

    def _run(self, inputs: Mapping[str, torch.Tensor], steps: Sequence[_Step]
             ) -> list[torch.Tensor]:
        slots: list = [None] * len(self._slot_shapes)
        for name, slot in self._inputs:
            try:
                value = inputs[name]
            except KeyError:
                raise UserInputError(f"missing net input {name!r}; the net takes "
                                     f"{', '.join(self.input_names)}") from None
            slots[slot] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if len(inputs) != len(self._inputs):
            extra = sorted(set(inputs) - set(self.input_names))
            if extra:
                raise UserInputError(f"unknown net inputs {extra}; the net takes "
                                     f"{', '.join(self.input_names)}")
        for module, bottoms, tops, detach in steps:
            try:
                if detach is None:
                    outs = module(*[slots[i] for i in bottoms])
                else:
                    outs = module(*[slots[i].detach() if d else slots[i]
                                    for i, d in zip(bottoms, detach)])
            except RuntimeError as exc:
                error = self._shape_failure(module, bottoms, slots, exc)
                if error is None:
                    raise
                raise error from exc
            for i, t in zip(tops, outs):
                slots[i] = t
        return slots

    def _steps_for(self, outputs: Sequence[str] | None) -> list[_Step]:
        if outputs is None:
            return self._steps
        wanted = {self.versions[name][-1] for name in outputs}
        steps = []
        for step in reversed(self._fused_steps):   # a step is needed when a needed slot is its top
            if wanted.intersection(step.tops):
                steps.append(step)
                wanted.update(step.bottoms)
        return steps[::-1]

    def _shape_failure(self, module, bottoms, slots, exc: RuntimeError) -> ShapeError | None:
        """When a layer fails on bottoms of another shape than the net was built for (inputs fed
        in the wrong shape), a ShapeError naming the layer and both shapes; else None."""
        got = [tuple(slots[i].shape) for i in bottoms]
        built = [self._slot_shapes[i] for i in bottoms]
        if [g[1:] for g in got] == [b[1:] for b in built]:
            return None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ShapeError(f"layer {module.name!r} ({module.type}) got bottoms of shape "
                          f"{[list(g) for g in got]} but the net was built for "
                          f"{[list(b) for b in built]} (batch size aside): {first}")

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every blob's final value (in-place chains: the last version), keyed by blob name."""
        slots = self._run(inputs, self._fused_steps)
        return {name: slots[s] for name, s in self._final}

    def objective(self, blobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's objective: sum over weighted tops of loss_weight * top.sum() (0-d tensor)."""
        total = None
        for name, w in self.loss_weights.items():
            top = blobs[name]
            term = top if top.dim() == 0 else top.sum()
            if w != 1.0:
                term = term * w
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

    # ------------------------------------------------------------------ params

    def learnable_params(self) -> list[LearnableParam]:
        """Owner parameters in Caffe's learnable order (solverstate history order)."""
        return [LearnableParam(f"{o.layer}/{o.index}", self.layers[o.layer].blobs[o.index],
                               o.lr_mult, o.decay_mult) for o in self._owners]

    def param_groups(self) -> list[dict]:
        """torch.optim param groups, one per distinct (lr_mult, decay_mult), lr_mult 0 left out."""
        groups: dict[tuple[float, float], dict] = {}
        for p in self.learnable_params():
            if p.lr_mult == 0.0:
                continue
            g = groups.setdefault((p.lr_mult, p.decay_mult),
                                  {"params": [], "lr_mult": p.lr_mult, "decay_mult": p.decay_mult})
            g["params"].append(p.param)
        return list(groups.values())

    def share_from(self, other: "CaffeNet") -> None:
        """Caffe's ShareTrainedLayersWith: same-named layers use `other`'s Parameters."""
        for name, module in self.layers.items():
            if name not in other.layers or not len(module.blobs):
                continue
            src = other.layers[name]
            if len(src.blobs) != len(module.blobs):
                raise NetDefinitionError(f"layer {name!r}: cannot share {len(src.blobs)} blobs "
                                         f"with a layer of {len(module.blobs)} blobs")
            for i in range(len(module.blobs)):
                if tuple(src.blobs[i].shape) != tuple(module.blobs[i].shape):
                    raise ShapeError(f"layer {name!r} blob {i}: cannot share shape "
                                     f"{list(src.blobs[i].shape)} with {list(module.blobs[i].shape)}")
                module.blobs[i] = src.blobs[i]


def use_exact_fp32() -> None:
    """Turn off TF32 in cuDNN convolutions and cuBLAS matmuls (process-wide torch flags).

    torch lets cuDNN use TF32 by default on Ampere and newer GPUs; that moves results by about
    1e-3 relative, far outside Caffe's float32 parity (measured on an H200 against the oracle:
    gradients up to 0.4 relative off with TF32, <= 1e-5 without). Call this before training or
    comparing on a GPU; it does nothing harmful on CPU.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _hdf5_shape(lp, top: str, source: str) -> Shape | None:
    """(batch_size,) + dataset shape[1:] read from the first file of an HDF5Data source list."""
    from hovcaffe.utils.paths import candidates

    for cand in candidates(lp.hdf5_data_param.source, Path(source).parent if source else None):
        if cand.is_file():
            lines = [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
            if not lines:
                return None
            h5 = next((p for p in candidates(lines[0], cand.parent) if p.exists()), Path(lines[0]))
            try:
                import h5py
                with h5py.File(h5, "r") as f:
                    if top not in f:
                        return None
                    return (int(lp.hdf5_data_param.batch_size),) + tuple(f[top].shape[1:])
            except OSError:
                return None
    return None
