"""The CPU fast path, chosen per net by measurement (`--fast auto|on|off`).

A candidate is another way of running the *same* net, installed on the net itself
(`net.forward` replaced), so every caller of `net(**inputs)` - the training loop, `run_test`,
`time`, `forward` - takes it without knowing:

* ``compile``: `torch.compile` (inductor).
* ``channels_last``: eager, with the 4-D convolution weights stored channels-last (NHWC), so
  oneDNN's convolutions write channels-last tops and the max/average poolings that read them
  take their vectorised channels-last kernels. Same values, another memory layout; the
  gradients agree with eager's to float rounding (LeNet b64: 2e-6 relative). Not used where
  `may_measure` is False (distributed ranks hand the gradients to collectives, which are only
  tested on the usual layout).

The modes:

* ``off``: eager; nothing of torch's compiler stack is imported.
* ``on``: ``compile``, unmeasured.
* ``auto``: on the first batch, after each candidate's first pass (compiling, for ``compile``)
  and an eager warm-up, eager and the candidates (`AUTO_CANDIDATES`) run `REPEATS` timed
  passes each, alternating; the fastest best pass is kept (a candidate only when it is at least
  `MARGIN` faster than eager, so auto does not switch on noise). A candidate that fails on the
  net (a layer that needs the usual layout) is left out, and logged. The compile time
  is start-up: it is logged and stored, and a cached "compile wins" is only used when the
  planned passes save more than it costs. Measuring leaves the net as it found it: parameters,
  buffers (BatchNorm statistics), gradients and the RNG (Dropout) are restored, so the run that
  follows is the one eager would have made. Distributed ranks do not measure (`may_measure`).

`benchmarks/converted_vs_native.py --fast auto` prints each net's choice and its start-up.

Why measured: the winner depends on the net and the machine. `torch.compile` once took LeNet at
one thread from 15.9 to 10.0 ms per pass but made CIFAR-10 quick slower (59 -> 94 ms);
channels-last took LeNet b64 from 30.5 to 20.1 ms and CIFAR-10 quick b100 from 154 to 108 ms
at one thread (docs/performance.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Callable, Iterator, Mapping, Sequence

import torch

from hovcaffe.errors import UserInputError
from hovcaffe.runtime.choice_cache import ChoiceCache, FastRecord, choice_key
from hovcaffe.runtime.modes import FAST_MODES

log = logging.getLogger(__name__)

EAGER = "eager"
#: timed passes per path in `auto`, alternating (after the compiling pass and an eager warm-up)
REPEATS = 5
#: the candidate must take at most this fraction of eager's time to be kept
MARGIN = 0.97


def _install_compiled(net) -> None:
    # dynamic=False: a batch of another size (a short last batch) recompiles once instead of
    # every graph paying for symbolic shapes. Kept on the net, so that switching paths while
    # `auto` measures does not compile again.
    compiled = net.__dict__.get("_compiled_forward")
    if compiled is None:
        compiled = torch.compile(type(net).forward.__get__(net), dynamic=False)
        net.__dict__["_compiled_forward"] = compiled
    net.forward = compiled


#: the layer types whose 4-D weights the channels_last candidate stores channels-last
_CONV_TYPES = ("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution")


def _conv_weights(net) -> list[torch.nn.Parameter]:
    return [p for m in net.layers.values() if getattr(m, "type", None) in _CONV_TYPES
            for p in m.blobs if p.dim() == 4]


def _relayout(net, memory_format: torch.memory_format) -> None:
    # `.to` rather than `.contiguous`: a weight with one input channel is "contiguous" in both
    # layouts, and only `.to` gives it the strides that make oneDNN choose channels-last.
    # The Parameter objects stay (optimizer state, shared params); only their storage moves.
    # A gradient already there moves too: autograd accumulates into it in the param's layout.
    with torch.no_grad():
        for p in _conv_weights(net):
            p.data = p.data.to(memory_format=memory_format)
            if p.grad is not None:
                p.grad = p.grad.to(memory_format=memory_format)


def _install_channels_last(net) -> None:
    _relayout(net, torch.channels_last)
    net.forward = type(net).forward.__get__(net)   # marks the net as on a fast path


#: candidate name -> installs it on a net (replacing `net.forward`)
CANDIDATES: dict[str, Callable[[torch.nn.Module], None]] = {
    "compile": _install_compiled,
    "channels_last": _install_channels_last,
}
#: candidate name -> undoes what its install did besides `net.forward`
UNDO: dict[str, Callable[[torch.nn.Module], None]] = {
    "channels_last": lambda net: _relayout(net, torch.contiguous_format),
}
#: what `auto` compares with eager
AUTO_CANDIDATES: tuple[str, ...] = ("compile", "channels_last")
#: candidates only a process that may measure uses (see the module docstring)
LOCAL_ONLY = frozenset({"channels_last"})


def uninstall(net) -> None:
    """Back to the class's eager forward (and the usual weight layout)."""
    if "forward" in net.__dict__:
        undo = UNDO.get(getattr(net, "_fast_path", EAGER))
        if undo is not None:
            undo(net)
    net.__dict__.pop("forward", None)
    net.__dict__.pop("_fast_path", None)


def installed(net) -> str:
    """The path `net` runs now: a candidate name or "eager"."""
    return getattr(net, "_fast_path", EAGER) if "forward" in net.__dict__ else EAGER


def _install(net, name: str) -> None:
    uninstall(net)
    if name != EAGER:
        CANDIDATES[name](net)
        net.__dict__["_fast_path"] = name


@dataclasses.dataclass
class FastChoice:
    """What `enable_fast_path` did: the path, how it was decided and the timings (ms per pass)."""

    path: str
    decided_by: str               # "off", "on", "measured", "cache" or "not measured"
    eager_ms: float | None = None
    fast_ms: float | None = None
    compile_s: float | None = None


def check_mode(mode: str) -> str:
    if mode not in FAST_MODES:
        raise UserInputError(f"--fast {mode!r}: choose one of {', '.join(FAST_MODES)}")
    return mode


def enable_fast_path(net, mode: str, inputs: Mapping[str, torch.Tensor], *, training: bool,
                     planned_passes: int | None = None, cache: ChoiceCache | None = None,
                     candidate: str | Sequence[str] | None = None,
                     may_measure: bool = True) -> FastChoice:
    """Install the fast path on `net` per `mode` and return the choice (logged).

    Args:
        net: a built CaffeNet, on its device, weights loaded.
        mode: "auto", "on" or "off".
        inputs: one batch (what the net will be fed; the measurement runs on it).
        training: measure forward+backward of the objective (else forward under inference_mode).
        planned_passes: how many passes the run will make, when known: a cached winner is used
            only if it saves more than its first pass (compile time) cost over them.
        cache: where choices are remembered (default: `ChoiceCache()`).
        candidate: the fast path(s) compared with eager (default: `AUTO_CANDIDATES`; ``on``
            installs the first, by default ``compile``).
        may_measure: False where extra passes are not allowed (a distributed rank: its
            backward passes reach the collectives); `auto` then uses a cached choice or eager,
            and never a `LOCAL_ONLY` candidate.
    """
    check_mode(mode)
    candidates = (AUTO_CANDIDATES if candidate is None
                  else (candidate,) if isinstance(candidate, str) else tuple(candidate))
    if mode == "off":
        uninstall(net)
        return FastChoice(EAGER, "off")
    if mode == "on":
        _install(net, candidates[0])
        choice = FastChoice(candidates[0], "on")
        log.info("fast path: %s (--fast on, not measured)", candidates[0])
        return choice
    cache = cache if cache is not None else ChoiceCache()
    key = choice_key(net, inputs, training=training, candidates=candidates)
    record = cache.get(key)
    decided_by = "cache"
    if record is None and not may_measure:
        uninstall(net)
        log.info("fast path: eager (auto: no cached choice for this net, and this process may "
                 "not measure; a single-process run with --fast auto caches one)")
        return FastChoice(EAGER, "not measured")
    if record is None:
        record = _measure(net, inputs, training=training, candidates=candidates)
        cache.put(key, record)
        decided_by = "measured"
    path = record.path
    if decided_by == "cache" and path != EAGER and planned_passes is not None:
        saved_s = (record.eager_ms - record.fast_ms) * planned_passes / 1000.0
        if saved_s <= record.compile_s:
            path = EAGER  # too short a run to earn the compile back
    if path in LOCAL_ONLY and not may_measure:
        path = EAGER
    _install(net, path)
    log.info("fast path: %s (%s; eager %.3f ms, best candidate %.3f ms per pass, its first "
             "pass %.1f s; compared %s; cache %s)", path, decided_by, record.eager_ms,
             record.fast_ms, record.compile_s, ", ".join(candidates), cache.path)
    return FastChoice(path, decided_by, record.eager_ms, record.fast_ms, record.compile_s)


def enable_fast_path_fed(net, mode: str, feeder, *, training: bool,
                         planned_passes: int | None = None) -> FastChoice:
    """`enable_fast_path` measured on `feeder`'s next batch; the feeder is then rewound to it,
    so the run reads exactly the batches it would have read eagerly.

    Args:
        feeder: a `hovcaffe.training.feeder.NetFeeder` (`next_batch`, `state_dict`,
            `load_state_dict`).
    """
    if check_mode(mode) == "off":
        return enable_fast_path(net, mode, {}, training=training)
    position = feeder.state_dict()
    try:
        return enable_fast_path(net, mode, feeder.next_batch(), training=training,
                                planned_passes=planned_passes)
    finally:
        feeder.load_state_dict(position)


def _measure(net, inputs, *, training: bool, candidates: Sequence[str]) -> FastRecord:
    def one_pass():
        if training:
            loss = net.objective(net(**inputs))
            if loss.requires_grad:
                loss.backward()
        else:
            with torch.inference_mode():
                net(**inputs)

    sync = _sync_for(inputs)

    def timed_ms() -> float:
        sync()
        start = time.perf_counter()
        one_pass()
        sync()
        return (time.perf_counter() - start) * 1000.0

    with _state_kept(net):
        first_s: dict[str, float] = {}
        for name in candidates:
            _install(net, name)
            try:
                first_s[name] = timed_ms() / 1000.0   # compile's first pass compiles
            except RuntimeError as exc:  # e.g. a layer that needs the usual memory layout
                log.info("fast path: candidate %s fails on this net, left out: %s", name,
                         str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            finally:
                uninstall(net)
        one_pass()                        # eager's warm-up
        times: dict[str, list[float]] = {name: [] for name in (EAGER, *first_s)}
        for _ in range(REPEATS):          # alternating, so a load change hits all paths alike
            for name in times:
                _install(net, name)
                times[name].append(timed_ms())
        uninstall(net)
    # The best pass of each: on a shared machine the least disturbed one is the closest to
    # what the path costs.
    eager_ms = min(times[EAGER])
    if not first_s:
        return FastRecord(EAGER, eager_ms, eager_ms, 0.0)
    best = min(first_s, key=lambda name: min(times[name]))
    fast_ms = min(times[best])
    winner = best if fast_ms <= MARGIN * eager_ms else EAGER
    return FastRecord(winner, eager_ms, fast_ms, first_s[best])


def _sync_for(inputs) -> Callable[[], None]:
    first = next(iter(inputs.values()), None)
    if first is not None and first.device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@contextlib.contextmanager
def _state_kept(net) -> Iterator[None]:
    """Parameters, buffers, gradients and torch's RNG as they were before the block."""
    tensors = net.state_dict(keep_vars=True)
    saved = {k: v.detach().clone() for k, v in tensors.items()}
    grads = {name: (None if p.grad is None else p.grad.clone())
             for name, p in net.named_parameters()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in tensors.items():
                v.copy_(saved[k])
        for name, p in net.named_parameters():
            p.grad = grads[name]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
