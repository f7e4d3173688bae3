"""The example nightly job (jobs/nightly_lenet.yaml) runs end to end under a cron-like environment.

The crontab line of jobs/crontab.example is run by /bin/sh with only PATH and HOME set, as cron
does; the spec is the example with smaller numbers (few digits, few iterations) so it takes
seconds, and everything it writes goes under a temporary HOME.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

DATE = "2024-05-01"
# 30 iterations on 256 digits: far from the example's 0.9, but twice chance (0.1, 20 of 200 right,
# sd 4.2), so the gate still tells a model that learned from one that did not.
MIN_ACCURACY = 0.2


def small_copy(spec_dir: Path) -> Path:
    spec = yaml.safe_load((REPO / "jobs" / "nightly_lenet.yaml").read_text())
    spec["vars"]["lenet"] = str(REPO / "examples" / "lenet")  # the copy lives elsewhere
    spec["env"]["OMP_NUM_THREADS"] = "1"
    steps = {s["name"]: s for s in spec["steps"]}
    argv = steps["fetch"]["argv"]
    argv[argv.index("--train") + 1], argv[argv.index("--test") + 1] = "256", "200"
    steps["train"].update(iterations=30, snapshot_every=10)
    steps["score"].update(iterations=2)
    steps["score"]["min_scores"] = {"accuracy": MIN_ACCURACY}
    spec_dir.mkdir(parents=True)
    path = spec_dir / "nightly_lenet.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def crontab_command() -> tuple[dict[str, str], str]:
    """The environment lines and the command of the job line in jobs/crontab.example."""
    env, command = {}, None
    for line in (REPO / "jobs" / "crontab.example").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Z_]+)=(.*)$", line)
        if match:
            env[match.group(1)] = match.group(2).strip('"')
            continue
        command = line.split(None, 5)[5]
    assert command is not None, "no job line in crontab.example"
    return env, command


def test_crontab_line_runs_the_example_job_under_cron_environment(tmp_path):
    hovcaffe = Path(sys.executable).parent / "hovcaffe"
    if not hovcaffe.exists():
        pytest.skip(f"{hovcaffe} is not installed (pip install -e .)")
    env, command = crontab_command()
    assert "%" not in command, "an unescaped % would be cut by cron"
    words = shlex.split(command.split(">>")[0])
    assert Path(words[0]).is_absolute() and words[1:3] == ["job", "run"]
    assert words[-1].endswith("jobs/nightly_lenet.yaml") and Path(words[-1]).is_absolute()
    # The line as installed, pointed at this checkout, the small spec copy and a temporary log.
    home = tmp_path / "home"
    home.mkdir()
    spec = small_copy(tmp_path / "jobs")
    log = tmp_path / "cron.log"
    line = command.replace(words[0], str(hovcaffe)).replace(words[-1], str(spec))
    line = re.sub(r">>\s*\S+", f">> {log}", line)
    cron_env = {"PATH": env.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "SHELL": "/bin/sh"}
    line = line.replace("job run", f"job run --date {DATE}", 1)
    out = subprocess.run(["/bin/sh", "-c", line], env=cron_env, cwd=home, timeout=900)
    text = log.read_text()
    assert out.returncode == 0, text[-4000:]

    models = home / "hovcaffe-models" / "lenet" / DATE
    for name in ("lenet.caffemodel", "metrics.csv", "scores.json", "lenet.onnx"):
        assert (models / name).is_file(), f"{name} not published; log:\n{text[-3000:]}"
    assert not list(models.glob(".tmp-*"))
    data = home / "hovcaffe-data" / "lenet" / DATE
    assert (data / "digits_train_parquet" / "_SUCCESS").exists()
    # The gate's accuracy is that of the published model: the exported ONNX file run by
    # onnxruntime on the score step's samples (2 batches of 100, file order), read from the idx files.
    scores = json.loads((models / "scores.json").read_text())
    raw = data / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    session = ort.InferenceSession(str(models / "lenet.onnx"))
    (logits,) = session.run(["ip2"], {"data": images[:200].astype(np.float32) * np.float32(0.00390625)})
    assert scores["accuracy"] == pytest.approx(float(np.mean(logits.argmax(axis=1) == labels[:200])), abs=1e-6)
    assert scores["accuracy"] >= MIN_ACCURACY

    state = home / ".hovcaffe" / "jobs" / "nightly_lenet"
    summary = json.loads((state / "runs" / DATE / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert [s["outcome"] for s in summary["steps"]] == ["succeeded"] * 6
    assert summary["steps"][3]["metrics"]["iterations"] == 30
    assert f"job nightly_lenet, run {DATE}: succeeded (exit 0)" in text
    assert not (state / "lock").exists()
