"""`llm-interface`: serve (local mode: Redis + API + worker), api, worker, models, plan, worker-health, batch watch."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from common import embedded_redis
from common.logs import setup_logging
from common.settings import Settings


def _run_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    setup_logging(settings)
    logging.getLogger("arq").setLevel(logging.WARNING)  # not a line per batch cron run (every 2 s); failures stay
    # SIGTERM: stop accepting, let open requests and streams finish for up to 30 s, then close.
    # Uvicorn's loggers go through ours (log_config=None); its access log is off: `RequestLog` writes one.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=30)


def _run_worker(settings: Settings) -> None:
    from worker.main import main as worker_main

    setup_logging(settings)  # before worker.main's basicConfig, which then leaves it as it is
    worker_main(settings)


def _list_models(settings: Settings) -> None:
    from common.discovery import scan_models

    catalog = scan_models(settings.models_dir, settings.load_policy)
    print(f"{'MODEL':40} {'TYPE':10} {'SIZE':>10}  ARCHITECTURE")
    for m in catalog.models.values():
        print(f"{m.id:40} {m.type!s:10} {m.size_bytes / 2**20:>8.1f}MB  {m.architecture or '-'}")
    for p in catalog.problems:
        print(f"! {p.id or p.path}: {p.error}")


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


def _serve(settings: Settings) -> int:
    """Everything on this machine: embedded Redis (unless LLM_REDIS_URL), the API and one worker. Nothing starts
    when the API's port is taken; everything stops (exit 1) when any of them fails."""
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
    for role in ("worker", "api"):
        procs.append(subprocess.Popen([sys.executable, "-m", "common.cli", role], env=env))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-interface", description=__doc__)
    parser.add_argument("command", choices=["serve", "api", "worker", "models", "plan", "worker-health", "batch"])
    parser.add_argument("args", nargs="*", help="batch: `watch BATCH_ID` (a progress bar of its request counts)")
    parser.add_argument("--base-url", help="batch: the API's URL (default http://127.0.0.1:LLM_PORT)")
    parser.add_argument("--gpu-gb", type=float, help="plan: plan for a card of this many GiB (default: this GPU)")
    parser.add_argument("--json", action="store_true", help="plan: print the plan as JSON")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "plan":
        from worker.plan import main as plan_main

        return plan_main(settings, args.gpu_gb, args.json)
    if args.command == "batch":
        if len(args.args) != 2 or args.args[0] != "watch":
            parser.error("usage: llm-interface batch watch BATCH_ID")
        from common.batch_watch import watch

        key = next((k.strip() for k in settings.api_keys.split(",") if k.strip()), None)
        return watch(args.base_url or f"http://127.0.0.1:{settings.port}", args.args[1], key)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "worker-health":  # the worker container's healthcheck
        from common import healthcheck

        return healthcheck.main(settings)
    {"api": _run_api, "worker": _run_worker, "models": _list_models}[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
