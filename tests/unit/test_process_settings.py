"""`hovcaffe time` runs the net with hovcaffe's process settings (hovcaffe/runtime/process.py),
as `train` does: its passes reuse freed memory instead of page-faulting it back in. Each check
runs in a fresh interpreter, because the setting is per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# One InnerProduct whose weight gradient (4096 x 3072 fp32 = 48 MiB) is above glibc's largest
# adaptive mmap threshold (32 MiB): with malloc's defaults it is mapped and unmapped every pass.
_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3072 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4096 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

# Runs the real `hovcaffe time` command; its timing function is wrapped (and still called) so
# that the page faults of single passes can be counted after warm-up.
_TIME = """
    import json, resource, sys
    from hovcaffe.commands import time as time_command
    from hovcaffe.utils import memory

    real_time_net = time_command.time_net
    faults = []

    def counting_time_net(net, inputs, iterations, **kw):
        real_time_net(net, inputs, 20, **kw)  # warm-up: glibc's heap settles in a few passes
        for _ in range(5):  # fewest of five: another process may make the kernel reclaim once
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            result = real_time_net(net, inputs, 1, **kw)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return result

    time_command.time_net = counting_time_net
    time_command.cli.main(["-model", sys.argv[1], "-iterations", "1", "--json"],
                          standalone_mode=False)
    print(json.dumps({"applied": memory._applied, "faults": min(faults)}))
"""


def _time(model: Path, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_TIME), str(model)], cwd=REPO,
                         check=True, capture_output=True, text=True, env={**os.environ, **env},
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_hovcaffe_time_applies_the_process_settings_train_uses(tmp_path):
    model = tmp_path / "ip.prototxt"
    model.write_text(_NET)
    tuned = _time(model)
    plain = _time(model, HOVCAFFE_MALLOC_TUNING="0")
    assert tuned["applied"] is True and plain["applied"] is False
    pages = 48 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    # without the setting the 48 MiB gradient's pages fault in again on every pass ...
    assert plain["faults"] > pages // 2, plain
    # ... with it, a pass runs on the memory the previous one freed
    assert tuned["faults"] < pages // 20, tuned
