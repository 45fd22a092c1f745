"""The README's quick start, followed literally on a copy of the repository in a fresh virtualenv.

The commands come from the README's first screen (the text before its first `##` heading), not from this
file: the first ```bash block is the run command (`<install> && <serve>`), the second the test command,
the ```python block the client call. The serve command runs with no redis-server on PATH and
LLM_REDIS_URL unset, as on a machine with nothing but Python, so the embedded Redis comes from the
installed packages. Ctrl-C is sent as a terminal sends it (SIGINT to the whole process group) and every
process the command started must be gone afterwards.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import ROOT, free_port, wait_until

README = ROOT / "README.md"
MODEL = "all-minilm-l6-v2"
INSTALL_TIMEOUT_S = 1200
READY_TIMEOUT_S = 300


def first_screen() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## ", 1)[0]


def blocks(lang: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"^```{lang}\n(.*?)^```", first_screen(), re.S | re.M)]


def run_and_test_commands() -> tuple[list[str], str, str]:
    """(install steps, serve command, test command) from the README's first screen."""
    bash = blocks("bash")
    assert len(bash) == 2, f"the README's first screen must hold two bash blocks (run, test), found {bash}"
    run, test = (" ".join(b.replace("\\\n", " ").split()) for b in bash)
    *install, serve = (part.strip() for part in run.split("&&"))
    assert install and "serve" in serve, f"run command must be '<install> && <serve>': {run}"
    return install, serve, test


def test_readme_first_screen_is_runnable() -> None:
    install, serve, test = run_and_test_commands()
    for step in [*install, test]:
        script = ROOT / shlex.split(step)[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{step}: not an executable file in the repo"
    words = shlex.split(serve)
    assert words[-2:] == [".venv/bin/llm-interface", "serve"], serve
    assert all("=" in w for w in words[:-2]), f"only VAR=value assignments may precede the command: {serve}"
    # CI runs the README's test command, so "test it" is what CI does.
    assert test in (ROOT / ".ci" / "run").read_text()
    assert len(blocks("python")) == 1


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a fresh clone holds")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


REDIS_SERVERS = ("redis-server", "valkey-server")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "PYTEST_", "VIRTUAL_ENV"))}
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(d for d in path if d and not Path(d, "llm-interface").exists())  # not our venv
    return env


def _path_without_redis(path: str, shadow: Path) -> str:
    """PATH as on a machine with no Redis installed: a folder holding a redis-server is replaced by
    `shadow`, a folder of links to everything else in it."""
    out = []
    for folder in path.split(os.pathsep):
        if not any(Path(folder, exe).exists() for exe in REDIS_SERVERS):
            out.append(folder)
            continue
        copy = shadow / str(len(out))
        copy.mkdir(parents=True)
        for entry in Path(folder).iterdir():
            if entry.name not in REDIS_SERVERS:
                (copy / entry.name).symlink_to(entry)
        out.append(str(copy))
    return os.pathsep.join(out)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run_client_snippet(port: int) -> Any:
    """The README's python block against our port; returns the value of its last expression."""
    tree = ast.parse(blocks("python")[0].replace("15530", str(port)))
    last = tree.body.pop()
    assert isinstance(last, ast.Expr), "the README's python block should end with the call"
    namespace: dict[str, Any] = {}
    exec(compile(tree, "README.md", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "README.md", "eval"), namespace)


@pytest.mark.quickstart
@pytest.mark.timeout(INSTALL_TIMEOUT_S + READY_TIMEOUT_S + 300)
def test_quickstart_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to follow the processes `serve` starts")
    install, serve, _ = run_and_test_commands()
    repo, home = tmp_path / "repo", tmp_path / "home"
    for name in _tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    home.mkdir()
    env = _base_env()
    log = tmp_path / "install.log"
    try:
        for step in install:
            with log.open("ab") as out:
                proc = subprocess.run(["bash", "-c", step], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=INSTALL_TIMEOUT_S)
            assert proc.returncode == 0, f"{step} failed:\n{log.read_text()[-4000:]}"

        # The serve command runs under a fresh HOME, where its LLM_MODELS_DIR does not exist: a fresh machine with
        # no models, served the packaged one.
        port = free_port()
        serve_env = {**env, "HOME": str(home), "LLM_PORT": str(port), "HF_HUB_OFFLINE": "1",
                     "PATH": _path_without_redis(env["PATH"], tmp_path / "path")}
        assignments = dict(w.split("=", 1) for w in shlex.split(serve, posix=False)[:-2])
        models_value = assignments.get("LLM_MODELS_DIR", "./models")
        models_dir = subprocess.run(["bash", "-c", f"printf %s {models_value}"], cwd=repo, env=serve_env,
                                    capture_output=True, text=True, check=True).stdout
        assert not (repo / models_dir).exists()

        serve_log = (tmp_path / "serve.log").open("wb")
        proc_serve = subprocess.Popen(["bash", "-c", serve], cwd=repo, env=serve_env, stdout=serve_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        started: set[int] = set()
        try:
            def ready() -> bool:
                started.update(_descendants(proc_serve.pid))
                assert proc_serve.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
                return bool(health.get("ready")) and int(health.get("models", 0)) >= 1

            wait_until(ready, READY_TIMEOUT_S, "serve ready")
            result = _run_client_snippet(port)
            assert [len(d.embedding) for d in result.data] == [384, 384]
            started.update(_descendants(proc_serve.pid))
            commands = [_cmdline(p) for p in started]
            assert any("valkey-server" in c for c in commands), commands  # no redis-server on PATH
            assert sum("-m cli" in c for c in commands) >= 2, commands  # API and worker

            os.killpg(proc_serve.pid, signal.SIGINT)  # Ctrl-C in a terminal
            assert proc_serve.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-4000:]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(_alive(p) for p in started):
                time.sleep(0.2)
            left = {p: _cmdline(p) for p in started if _alive(p)}
            assert not left, f"processes left after Ctrl-C: {left}"
            # Redis is stopped last, so nothing lost its connection on the way down.
            shutdown = (tmp_path / "serve.log").read_text(errors="replace").rsplit("POST /v1/embeddings", 1)[-1]
            assert "redis error" not in shutdown.lower() and "Traceback" not in shutdown, shutdown[-4000:]
        finally:
            if proc_serve.poll() is None:
                os.killpg(proc_serve.pid, signal.SIGKILL)
                proc_serve.wait()
            for pid in started:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            serve_log.close()
    finally:
        shutil.rmtree(repo / ".venv", ignore_errors=True)  # gigabytes; keep the logs
