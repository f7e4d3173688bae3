"""The CPU fast path, chosen per net by measurement (`--fast auto|on|off`).

A candidate is another way of running the *same* net - today `torch.compile` (inductor). It is
installed on the net itself (`net.forward` replaced), so every caller of `net(**inputs)` - the
training loop, `run_test`, `time`, `forward` - takes it without knowing.

* ``off``: eager; nothing of torch's compiler stack is imported.
* ``on``: the candidate, unmeasured.
* ``auto``: on the first batch, after the candidate's compiling pass and an eager warm-up, the
  two run `REPEATS` timed passes each, alternating; the faster best pass is kept (the candidate
  only when it is at least `MARGIN` faster, so auto does not switch on noise). The compile time
  is start-up: it is logged and stored, and a cached "compile wins" is only used when the
  planned passes save more than it costs. Measuring leaves the net as it found it: parameters,
  buffers (BatchNorm statistics), gradients and the RNG (Dropout) are restored, so the run that
  follows is the one eager would have made. Distributed ranks do not measure (`may_measure`).

`benchmarks/converted_vs_native.py --fast auto` prints each net's choice and its start-up.

Why measured: the winner depends on the net and the machine. `torch.compile` once took LeNet at
one thread from 15.9 to 10.0 ms per pass but made CIFAR-10 quick slower (59 -> 94 ms).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Callable, Iterator, Mapping

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
    # every graph paying for symbolic shapes.
    net.forward = torch.compile(type(net).forward.__get__(net), dynamic=False)


#: candidate name -> installs it on a net (replacing `net.forward`)
CANDIDATES: dict[str, Callable[[torch.nn.Module], None]] = {
    "compile": _install_compiled,
}


def uninstall(net) -> None:
    """Back to the class's eager forward."""
    net.__dict__.pop("forward", None)


def installed(net) -> str:
    """The path `net` runs now: a candidate name or "eager"."""
    return getattr(net, "_fast_path", EAGER) if "forward" in net.__dict__ else EAGER


def _install(net, name: str) -> None:
    uninstall(net)
    if name != EAGER:
        CANDIDATES[name](net)
        net._fast_path = name


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
                     candidate: str = "compile", may_measure: bool = True) -> FastChoice:
    """Install the fast path on `net` per `mode` and return the choice (logged).

    Args:
        net: a built CaffeNet, on its device, weights loaded.
        mode: "auto", "on" or "off".
        inputs: one batch (what the net will be fed; the measurement runs on it).
        training: measure forward+backward of the objective (else forward under inference_mode).
        planned_passes: how many passes the run will make, when known: a cached compiled winner
            is used only if it saves more than its compile time over them.
        cache: where choices are remembered (default: `ChoiceCache()`).
        candidate: the fast path compared with eager.
        may_measure: False where extra passes are not allowed (a distributed rank: its
            backward passes reach the collectives); `auto` then uses a cached choice or eager.
    """
    check_mode(mode)
    if mode == "off":
        uninstall(net)
        return FastChoice(EAGER, "off")
    if mode == "on":
        _install(net, candidate)
        choice = FastChoice(candidate, "on")
        log.info("fast path: %s (--fast on, not measured)", candidate)
        return choice
    cache = cache if cache is not None else ChoiceCache()
    key = choice_key(net, inputs, training=training, candidates=(candidate,))
    record = cache.get(key)
    decided_by = "cache"
    if record is None and not may_measure:
        uninstall(net)
        log.info("fast path: eager (auto: no cached choice for this net, and this process may "
                 "not measure; a single-process run with --fast auto caches one)")
        return FastChoice(EAGER, "not measured")
    if record is None:
        record = _measure(net, inputs, training=training, candidate=candidate)
        cache.put(key, record)
        decided_by = "measured"
    path = record.path
    if decided_by == "cache" and path != EAGER and planned_passes is not None:
        saved_s = (record.eager_ms - record.fast_ms) * planned_passes / 1000.0
        if saved_s <= record.compile_s:
            path = EAGER  # too short a run to earn the compile back
    _install(net, path)
    log.info("fast path: %s (%s; eager %.3f ms, %s %.3f ms per pass, compile %.1f s; "
             "cache %s)", path, decided_by, record.eager_ms, candidate, record.fast_ms,
             record.compile_s, cache.path)
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


def _measure(net, inputs, *, training: bool, candidate: str) -> FastRecord:
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
        _install(net, candidate)
        compile_s = timed_ms() / 1000.0   # the first pass compiles
        fast_forward = net.forward
        uninstall(net)
        one_pass()                        # eager's warm-up
        times: dict[str, list[float]] = {EAGER: [], candidate: []}
        for _ in range(REPEATS):          # alternating, so a load change hits both paths alike
            for name in (EAGER, candidate):
                if name == EAGER:
                    uninstall(net)
                else:
                    net.forward = fast_forward
                times[name].append(timed_ms())
        uninstall(net)
    # The best pass of each: on a shared machine the least disturbed one is the closest to
    # what the path costs.
    eager_ms, fast_ms = min(times[EAGER]), min(times[candidate])
    winner = candidate if fast_ms <= MARGIN * eager_ms else EAGER
    return FastRecord(winner, eager_ms, fast_ms, compile_s)


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
