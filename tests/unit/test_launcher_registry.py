"""The launcher registry: backends are the modules of hovcaffe.distributed.backends, `auto` is
Horovod when it can be imported, and without any launcher distributed training ends with one
line saying so and how to add one."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hovcaffe.distributed.backend import (Backend, NoLauncherError, backend_class, backend_names,
                                          registered_backends)
from hovcaffe.options import DistributedOptions, OptionError


def test_every_module_with_a_backend_is_registered_by_its_name():
    classes = registered_backends()
    assert {"horovod", "local"} <= set(classes) and set(classes) == set(backend_names())
    for name, cls in classes.items():
        assert issubclass(cls, Backend) and cls.name == name
    assert classes["horovod"].auto_order == 0 and classes["local"].auto_order is None


def test_auto_is_horovod_when_it_imports():
    pytest.importorskip("horovod.spark", reason="Horovod is optional (requirements/horovod.txt)")
    assert backend_class("auto").name == "horovod"
    assert DistributedOptions.resolve({}, environ={}).backend == "auto"


def test_an_unknown_backend_lists_the_known_ones():
    with pytest.raises(OptionError, match=r"^backend: 'carrier' is not known; use one of: auto, "
                                          r"horovod, local"):
        DistributedOptions.resolve({"backend": "carrier"})


# Python refuses to import a module whose sys.modules entry is None: this interpreter has no
# Horovod, whatever is installed.
WITHOUT_HOROVOD = "import sys; sys.modules['horovod'] = None; "


def test_without_horovod_asking_for_it_is_one_line_naming_the_fix(tmp_path):
    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n')
    code = (WITHOUT_HOROVOD + "from hovcaffe.cli import main; "
            f"main(['train', '-solver', {str(solver)!r}, '-num-proc', '2', '-backend', 'horovod'])")
    env = {k: v for k, v in os.environ.items() if k != "HOVCAFFE_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hovcaffe: error: the horovod launcher is not installed (horovod "
                               "cannot be imported")
    assert "scripts/install.sh builds Horovod" in lines[0]
    assert "Traceback" not in proc.stderr


def test_without_horovod_auto_takes_the_next_launcher_or_says_none_is_installed():
    """`auto` without Horovod: the next installed backend that takes part in auto; when there is
    none, a user error (exit 2) saying no launcher is installed and how to add one."""
    code = (WITHOUT_HOROVOD + "from hovcaffe.distributed.backend import backend_class, "
            "registered_backends, NoLauncherError\n"
            "others = sorted((c for c in registered_backends().values() if c.name != 'horovod' "
            "and c.auto_order is not None and c.missing() is None), key=lambda c: c.auto_order)\n"
            "try:\n    print('picked', backend_class('auto').name, [c.name for c in others][:1])\n"
            "except NoLauncherError as e:\n    print('none', e.exit_code, others, e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split(" ", 3)
    if words[0] == "picked":
        assert proc.stdout.strip() == f"picked {words[1]} [{words[1]!r}]" and words[1] != "horovod"
    else:
        assert words[:3] == ["none", "2", "[]"], proc.stdout
        assert words[3].startswith("distributed training needs a launcher and none is installed "
                                   "(horovod: horovod cannot be imported")
        assert "scripts/install.sh builds Horovod" in words[3]


def test_devices_become_executor_cores_and_torch_ranks_hold_a_task_s_cores():
    """CaffeOnSpark's -devices K: K cores per executor. Horovod fills them with K one-rank tasks;
    the torch backend runs K ranks inside one task, which must then claim all K cores."""
    from hovcaffe.launch import session_defaults

    def settings(**given):
        return session_defaults(DistributedOptions.resolve(given, environ={}), 3)

    torch_k = settings(backend="torch", num_proc=4, devices=2)
    assert torch_k["spark.executor.cores"] == "2" and torch_k["spark.task.cpus"] == "2"
    assert torch_k["spark.executor.instances"] == "3"
    assert "spark.task.cpus" not in settings(backend="torch", num_proc=4)
    assert "spark.executor.cores" not in settings(backend="torch", num_proc=4)
    if backend_class("auto").name == "horovod":
        horovod_k = settings(backend="horovod", num_proc=4, devices=2)
        assert horovod_k["spark.executor.cores"] == "2" and "spark.task.cpus" not in horovod_k
