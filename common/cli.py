"""`llm-interface`: serve (local mode: Redis + API + worker), api, worker, models."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from common import embedded_redis
from common.settings import Settings


def _run_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())


def _run_worker(settings: Settings) -> None:
    from worker.main import main as worker_main

    worker_main(settings)


def _list_models(settings: Settings) -> None:
    from common.discovery import scan_models

    catalog = scan_models(settings.models_dir)
    print(f"{'MODEL':40} {'TYPE':10} {'SIZE':>10}  ARCHITECTURE")
    for m in catalog.models.values():
        print(f"{m.id:40} {m.type!s:10} {m.size_bytes / 2**20:>8.1f}MB  {m.architecture or '-'}")
    for p in catalog.problems:
        print(f"! {p.id or p.path}: {p.error}")


def _serve(settings: Settings) -> int:
    """Everything on this machine: embedded Redis (unless LLM_REDIS_URL), the API and one worker."""
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if settings.redis_url is None:
        redis_proc, url = embedded_redis.start(settings.data_dir / "redis")
        procs.append(redis_proc)
        env["LLM_REDIS_URL"] = url
        print(f"embedded Redis at {url}", flush=True)
    for role in ("worker", "api"):
        procs.append(subprocess.Popen([sys.executable, "-m", "common.cli", role], env=env))
    print(f"serving on http://{settings.host}:{settings.port}/v1 (Ctrl-C stops)", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    while not stop:
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            print(f"a child process exited ({exited[0].args!r}); stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    for p in reversed(procs):  # API and worker first, Redis last
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-interface", description=__doc__)
    parser.add_argument("command", choices=["serve", "api", "worker", "models"])
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        return _serve(settings)
    {"api": _run_api, "worker": _run_worker, "models": _list_models}[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
