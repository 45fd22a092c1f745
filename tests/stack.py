"""Real processes for tests: a redis-server the test owns, and the API and worker as subprocesses."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SLOW_MARKER = "SLOW-STREAM-MARKER"


def tiktoken_cache_dir() -> str | None:
    """A tiktoken cache holding cl100k_base, from llama-index-core (the `test` extra), for TIKTOKEN_CACHE_DIR: the API
    reads token-id embedding inputs with it, and LangChain's OpenAIEmbeddings tokenises with it, both offline."""
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "_static" / "tiktoken_cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *extra], stdout=subprocess.DEVNULL)
        wait_until(self._pong, 10, "redis-server")

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up (with or without a password)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Stack:
    """The API and one worker, as the user runs them, against `redis_url`."""

    redis_url: str
    models_dir: Path
    logdir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # e.g. the API key, for the readiness probe
    port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"LLM_REDIS_URL": self.redis_url, "LLM_MODELS_DIR": str(self.models_dir),
                    "LLM_PORT": str(self.port), "LLM_HOST": "127.0.0.1", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "LLM_LOG_LEVEL": "INFO", "LLM_WORKER_HEARTBEAT_S": "0.2",
                    "LLM_MODEL_CACHE_SIZE": "3",
                    # vLLM on CPU: a small KV cache, no graph compilation, fp32 (equal to transformers)
                    "LLM_VLLM_KV_CACHE_GB": "0.0625", "LLM_VLLM_ENFORCE_EAGER": "true", "LLM_VLLM_DTYPE": "float32",
                    # no handover to vLLM's processes in the middle of a test (tests/test_vllm_engine.py has its own)
                    "LLM_VLLM_HANDOVER_AFTER_S": "0",
                    "LLM_DATA_DIR": str(self.logdir / "data"),  # batch files: never the repository's ./data
                    # vLLM's caches (model-class inspection, ~10 s a fresh cache) shared by every test stack
                    "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT") or str(ROOT / ".cache" / "vllm"),
                    "LLM_DEBUG_SLOW_ON": SLOW_MARKER,  # a chat job with this in its prompt streams slowly
                    **self.env_extra})
        return env

    def _spawn(self, role: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = (self.logdir / f"{name}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "cli", role], env={**self.env(), **extra}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self, **extra: str) -> subprocess.Popen[bytes]:
        """Another worker; `extra`: environment of its own (a models folder, a worker id, ...)."""
        proc = self._spawn("worker", f"worker{len(self.workers)}", **extra)
        self.workers.append(proc)
        return proc

    def start_api(self) -> subprocess.Popen[bytes]:
        self.api = self._spawn("api", "api")
        return self.api

    def start(self, expect_models: int = 1) -> None:
        self.start_api()
        self.start_worker()
        wait_until(lambda: self.health().get("models", 0) >= expect_models, 60, "API and worker ready")

    def health(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.base_url}/v1/health", headers=self.headers, timeout=2).json()
        return data

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.api]:
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
