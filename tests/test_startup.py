"""Starting up and failing loudly: `serve` on a port that is taken exits non-zero at once with nothing left
running, so does the API alone; readiness means a worker is there; every body limit holds before parsing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import ROOT, RedisServer, Stack, free_port, wait_until


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    return {**env, "LLM_PORT": str(port), "LLM_HOST": "127.0.0.1", "LLM_DATA_DIR": str(tmp_path / "data"),
            "LLM_MODELS_DIR": str(tmp_path / "models"), **extra}


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_serve_on_a_busy_port_exits_non_zero_with_nothing_left_running(busy_port: int, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=_env(tmp_path, busy_port), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert f"127.0.0.1:{busy_port}" in err and "LLM_PORT" in err and "serving on" not in out
    wait_until(lambda: _gone(proc.pid), 5, "every process of serve gone")
    assert not (tmp_path / "data" / "redis").exists()  # the embedded Redis never started


def test_the_api_alone_on_a_busy_port_exits_promptly(busy_port: int, tmp_path: Path,
                                                      redis_server: RedisServer) -> None:
    env = _env(tmp_path, busy_port, LLM_REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/3")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cli", "api"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "address already in use" in done.stderr
    assert time.monotonic() - started < 20  # not the 30 s graceful-shutdown limit, nor a hang


def test_readiness_needs_a_worker(redis_server: RedisServer, models_dir: Path, tmp_path: Path) -> None:
    """An API with no worker yet: /health/ready and /v1/health say 503 and why; ready once a worker came."""
    api_only = Stack(redis_server.url.rsplit("/", 1)[0] + "/4", models_dir, tmp_path / "logs", port=free_port())
    api_only.start_api()
    try:
        wait_until(lambda: httpx.get(f"{api_only.base_url}/health/live", timeout=2).status_code == 200, 30, "the API")
        ready = httpx.get(f"{api_only.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503 and "no worker" in ready.json()["error"]
        health = httpx.get(f"{api_only.base_url}/v1/health", timeout=5)
        assert health.status_code == 503 and health.json()["ready"] is False and "no worker" in health.json()["error"]
        api_only.start_worker()
        wait_until(lambda: httpx.get(f"{api_only.base_url}/health/ready", timeout=5).status_code == 200, 60,
                   "ready once the worker registered")
        assert httpx.get(f"{api_only.base_url}/v1/health", timeout=5).json()["ready"] is True
    finally:
        api_only.stop()


def test_every_json_route_refuses_an_oversized_body_before_parsing(stack: Stack) -> None:
    big = b'{"input_file_id": "' + b"x" * (40 * 2**20) + b'", "endpoint": "/v1/embeddings"}'
    for path in ("/v1/batches", "/v1/completions", "/v1/admin/models/x/load"):
        response = httpx.post(f"{stack.base_url}{path}", content=big, headers={"content-type": "application/json"},
                              timeout=60)
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large", path


def test_serve_starts_one_worker_per_gpu_or_per_tensor_parallel_group() -> None:
    from cli.serve import gpu_groups, worker_env

    assert gpu_groups(None, 1) == [""] and gpu_groups("", 1) == [""]
    assert gpu_groups("0,1", 1) == ["0", "1"]
    assert gpu_groups("0, 1, 2, 3", 2) == ["0,1", "2,3"]  # a model needs two GPUs: one worker owns both
    with pytest.raises(ValueError, match="cannot be split"):
        gpu_groups("0,1,2", 2)
    env = worker_env({"LLM_WORKER_ID": "box"}, "2,3")
    assert (env["CUDA_VISIBLE_DEVICES"], env["LLM_WORKER_ID"]) == ("2,3", "box-gpu2_3")
    assert worker_env({"A": "1"}, "") == {"A": "1"}
