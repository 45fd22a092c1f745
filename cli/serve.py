"""`llm-interface serve`: everything on this machine (local mode) as child processes: an embedded Redis (unless
LLM_REDIS_URL), the API and one worker. Ctrl-C stops them all: API and worker first, Redis last."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from cli import embedded_redis
from common.settings import Settings


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (taken, or not an address of this machine); None when it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: only a listener blocks it
            sock.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _wait_live(api: subprocess.Popen[bytes], settings: Settings, timeout_s: float = 60.0) -> bool:
    """Until the API answers /health/live (True), or its process exits or the time is up (False)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/health/live"
    deadline = time.monotonic() + timeout_s
    while api.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def gpu_groups(gpus: str | None, tensor_parallel_size: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each worker to start: one per GPU listed ("0,1" -> ["0", "1"]), or one per
    `tensor_parallel_size` GPUs when a model needs several ("0,1,2,3" with 2 -> ["0,1", "2,3"]); [""] when
    none are listed (one worker, the default device)."""
    ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    if not ids:
        return [""]
    size = max(1, tensor_parallel_size)
    if len(ids) % size:
        raise ValueError(f"{len(ids)} GPUs ({','.join(ids)}) cannot be split into workers of "
                         f"LLM_VLLM_TENSOR_PARALLEL_SIZE={size} GPUs each")
    return [",".join(ids[i:i + size]) for i in range(0, len(ids), size)]


def worker_env(env: dict[str, str], group: str) -> dict[str, str]:
    """A worker's environment: its GPUs, and a stable consumer name per GPU group (its jobs survive a restart)."""
    if not group:
        return env
    name = env.get("LLM_WORKER_ID") or socket.gethostname()
    return {**env, "CUDA_VISIBLE_DEVICES": group, "LLM_CUDA_VISIBLE_DEVICES": group,
            "LLM_WORKER_ID": f"{name}-gpu{group.replace(',', '_')}"}


def serve(settings: Settings, gpus: str | None = None) -> int:
    """Everything on this machine: embedded Redis (unless LLM_REDIS_URL), the API and one worker. Nothing starts
    when the API's port is taken; everything stops (exit 1) when any of them fails."""
    try:
        groups = gpu_groups(gpus or settings.cuda_visible_devices, settings.vllm_tensor_parallel_size)
    except ValueError as exc:
        print(f"llm-interface serve: {exc}", file=sys.stderr)
        return 2
    problem = port_problem(settings.host, settings.port)
    if problem is not None:
        print(f"llm-interface serve: cannot listen on {settings.host}:{settings.port} ({problem}); set LLM_PORT "
              "to a free port or stop what holds it", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen[bytes]] = []
    redis_procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if settings.redis_url is None:
        redis_proc, url = embedded_redis.start(settings.data_dir / "redis")
        procs.append(redis_proc)
        redis_procs.append(redis_proc)
        env["LLM_REDIS_URL"] = url
        print(f"embedded Redis at {url}", flush=True)
    for group in groups:  # one worker per GPU (or per group of GPUs one model needs)
        procs.append(subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=worker_env(env, group)))
    procs.append(subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env))
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    if _wait_live(procs[-1], settings):
        print(f"serving on http://{settings.host}:{settings.port}/v1 (Ctrl-C stops)", flush=True)
    elif not stop:
        print("the API did not start; stopping", file=sys.stderr)
        stop, code = True, 1
    while not stop:
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            print(f"a child process exited ({exited[0].args!r}); stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    # API and worker first (the worker finishes admitted jobs, which needs Redis), Redis last.
    _terminate([p for p in procs if p not in redis_procs], timeout_s=45)
    _terminate(redis_procs, timeout_s=15)
    return code


def _terminate(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
