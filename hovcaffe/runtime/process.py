"""hovcaffe's process-wide runtime settings: the one place that says what a process running a
net over many passes sets for itself, and who applies it.

Applied by everything that runs a net for more than one pass in the current process: the
Trainer (`train`, ranks, the Estimator's fit), `hovcaffe time`, `hovcaffe test`, and the
executor side of `features` / the Estimator's transform. `forward` runs one pass and leaves the
process alone. Benchmarks that time hovcaffe "as shipped" apply the same call.

Today the only setting is glibc malloc's (`hovcaffe.utils.memory.retain_freed_memory`): freed
tensor memory stays in the heap, so pass N+1 does not page-fault back in what pass N freed.
Caffe gets this by design (it allocates its blobs once). ``HOVCAFFE_MALLOC_TUNING=0`` turns it
off.
"""
from __future__ import annotations

from dataclasses import dataclass

from hovcaffe.utils.memory import retain_freed_memory


@dataclass(frozen=True)
class ProcessSettings:
    """What `apply_process_settings` managed to set (each False where refused or switched off)."""

    retain_freed_memory: bool


def apply_process_settings() -> ProcessSettings:
    """Apply hovcaffe's process-wide runtime settings (idempotent; cheap after the first call)."""
    return ProcessSettings(retain_freed_memory=retain_freed_memory())
