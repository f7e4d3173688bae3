"""docker/ cannot be built here (no Docker engine), so parse and lint what can be checked.

The real image build is not exercised: this machine has a Docker client but no engine.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _parse(name: str) -> DockerfileParser:
    # The parser re-reads its file object on every property access, so keep it in memory.
    return DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_uses_the_install_script(name):
    parser = _parse(name)
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == "FROM"
    assert parser.baseimage
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert "scripts/install.sh" in runs, "the image must install through the one installer"
    copies = [i["value"] for i in parser.structure if i["instruction"] == "COPY"]
    assert any(c.split()[0] == "." for c in copies)
    assert "ENTRYPOINT" in instructions
    # every instruction is one docker knows
    known = {"FROM", "RUN", "ENV", "ARG", "COPY", "WORKDIR", "ENTRYPOINT", "CMD", "LABEL", "EXPOSE", "USER"}
    assert set(instructions) <= known


def test_cuda_image_builds_horovod_with_nccl():
    env = _parse("Dockerfile.cuda").envs
    assert env.get("HOVCAFFE_WITH_CUDA") == "1"


def test_compose_has_master_and_two_workers():
    spec = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"master", "worker1", "worker2"} <= set(services)
    assert "Master" in " ".join(services["master"]["entrypoint"])
    for w in ("worker1", "worker2"):
        assert "Worker" in " ".join(services[w]["entrypoint"])
        assert "spark://master:7077" in services[w]["command"]
    assert (DOCKER.parent / services["master"]["build"]["dockerfile"]).is_file()
