"""The documented GPU install resolves from PyPI: checked against a recorded resolution (pip cannot resolve offline).

``tests/fixtures/gpu_resolution/cp3{11,12}.txt`` are pip's own resolutions of ``requirements.txt`` against PyPI
(the command is in each file's header and in docs/training.md). The tests check that what we ask for is what was
resolved: ``requirements.txt`` is the ``[gpu]`` extra plus the core dependencies, every requirement (and every
requirement of the verl extras we name, read from the installed verl 0.9.1's metadata) is satisfied by the pinned
versions, and flash-attn, which has no wheel on PyPI and whose sdist does not build under pip's build isolation,
is asked for by nothing.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
RESOLUTIONS = sorted((REPO / "tests" / "fixtures" / "gpu_resolution").glob("cp3*.txt"))
FLASH_ATTN_EXTRAS = {"flash-attn-cu130torch211", "fsdp", "megatron"}  # verl 0.9.1 extras that pull flash-attn==2.8.3


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements_txt() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in (x.strip() for x in lines) if line and not line.startswith("#")]


def resolution(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def key(req: Requirement) -> tuple[str, frozenset[str], str]:
    return canonicalize_name(req.name), frozenset(req.extras), str(req.specifier)


def test_no_requirement_asks_for_flash_attn():
    gpu = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["gpu"]]
    for req in gpu + requirements_txt():
        assert canonicalize_name(req.name) != "flash-attn", req
        assert not (req.extras & FLASH_ATTN_EXTRAS), f"{req}: this verl extra pins flash-attn==2.8.3 (no PyPI wheel)"


def test_requirements_txt_is_the_gpu_extra_plus_the_core_dependencies():
    project = pyproject()["project"]
    expected = {key(Requirement(r)) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]}
    assert {key(r) for r in requirements_txt()} == expected


@pytest.mark.parametrize("path", RESOLUTIONS, ids=lambda p: p.stem)
def test_the_recorded_resolution_satisfies_every_requirement(path):
    pins = resolution(path)
    assert len(pins) > 200 and "flash-attn" not in pins
    for req in requirements_txt():
        name = canonicalize_name(req.name)
        assert name in pins and pins[name] in req.specifier, f"{req} vs {pins.get(name)}"


@pytest.mark.parametrize("path", RESOLUTIONS, ids=lambda p: p.stem)
def test_the_recorded_resolution_has_verls_own_cluster_pins(path):
    """verl 0.9.1's ``verl-core`` and ``vllm`` extras (torch 2.11, vLLM 0.24, transformers 5.9) are all met."""
    pins = resolution(path)
    verl = next(r for r in requirements_txt() if canonicalize_name(r.name) == "verl")
    assert metadata.version("verl") == pins["verl"] == "0.9.1"
    checked = 0
    for line in metadata.requires("verl") or []:
        req = Requirement(line)
        if req.marker is None or not any(req.marker.evaluate({"extra": extra}) for extra in verl.extras):
            continue
        if canonicalize_name(req.name) == "verl":  # verl[vllm] -> verl[verl-core], named above too
            continue
        name = canonicalize_name(req.name)
        assert name in pins and pins[name] in req.specifier, f"verl needs {req}, resolved {pins.get(name)}"
        checked += 1
    assert checked > 30
    assert (pins["torch"], pins["vllm"], pins["transformers"]) == ("2.11.0", "0.24.0", "5.9.0")


def test_the_docs_show_the_recorded_command():
    docs = (REPO / "docs" / "training.md").read_text()
    for path in RESOLUTIONS:
        header = [line[1:].strip() for line in path.read_text().splitlines()[1:3]]
        command = " ".join(part.rstrip("\\").strip() for part in header)
        assert command in " ".join(docs.replace("\\\n", " ").split()), command
