"""`llm-interface`: serve (local mode: Redis + API + worker), api, worker, models, plan, pull, rm, worker-health,
batch watch."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.logs import setup_logging
from common.settings import Settings


def _run_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    setup_logging(settings)
    logging.getLogger("arq").setLevel(logging.WARNING)  # not a line per batch cron run (every 2 s); failures stay
    # SIGTERM: stop accepting, let open requests and streams finish for up to 30 s, then close.
    # Uvicorn's loggers go through ours (log_config=None); its access log is off: `api.observe.Observe` writes one.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=30)


def _run_worker(settings: Settings) -> None:
    if settings.cuda_visible_devices and "CUDA_VISIBLE_DEVICES" not in os.environ:  # before torch is imported
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.cuda_visible_devices
    from worker.main import main as worker_main

    setup_logging(settings)  # before worker.main's basicConfig, which then leaves it as it is
    worker_main(settings)


def _list_models(settings: Settings) -> None:
    from common.discovery import scan_models

    catalog = scan_models(settings.models_dir, settings.load_policy, settings.default_models)
    print(f"{'MODEL':40} {'TYPE':10} {'SIZE':>10}  ARCHITECTURE")
    for m in catalog.models.values():
        print(f"{m.id:40} {m.type!s:10} {m.size_bytes / 2**20:>8.1f}MB  {m.architecture or '-'}")
    for p in catalog.problems:
        print(f"! {p.id or p.path}: {p.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-interface", description=__doc__)
    parser.add_argument("command", choices=["serve", "api", "worker", "models", "plan", "pull", "rm", "worker-health",
                                            "batch"])
    parser.add_argument("args", nargs="*", help="batch: `watch BATCH_ID` (a progress bar of its request counts); "
                        "pull: `ORG/NAME[@REVISION]` (a Hugging Face repository); rm: `NAME` (a model folder)")
    parser.add_argument("--name", help="pull: the model folder (and id) to save it as (default: the repository's NAME)")
    parser.add_argument("--force", action="store_true", help="pull: replace a model folder of that name")
    parser.add_argument("--base-url", help="batch: the API's URL (default http://127.0.0.1:LLM_PORT)")
    parser.add_argument("--gpu-gb", type=float, help="plan: plan for a card of this many GiB (default: this GPU)")
    parser.add_argument("--json", action="store_true", help="plan: print the plan as JSON")
    parser.add_argument("--gpus", help="serve: one worker per GPU of this list, e.g. 0,1 (LLM_CUDA_VISIBLE_DEVICES)")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "plan":
        from worker.plan import main as plan_main

        return plan_main(settings, args.gpu_gb, args.json)
    if args.command in ("pull", "rm"):
        if len(args.args) != 1:
            parser.error("usage: llm-interface pull ORG/NAME[@REVISION] [--name NAME] [--force], or rm NAME")
        from cli import pull

        if args.command == "rm":
            return pull.remove(settings, args.args[0])
        return pull.pull(settings, args.args[0], args.name, args.force)
    if args.command == "batch":
        if len(args.args) != 2 or args.args[0] != "watch":
            parser.error("usage: llm-interface batch watch BATCH_ID")
        from cli.batch_watch import watch

        key = next((k.strip() for k in settings.api_keys.split(",") if k.strip()), None)
        return watch(args.base_url or f"http://127.0.0.1:{settings.port}", args.args[1], key)
    if args.command == "serve":
        from cli.serve import serve

        return serve(settings, args.gpus)
    if args.command == "worker-health":  # the worker container's healthcheck
        from cli import healthcheck

        return healthcheck.main(settings)
    {"api": _run_api, "worker": _run_worker, "models": _list_models}[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
