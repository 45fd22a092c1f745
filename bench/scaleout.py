"""Scale-out: model loads, wall time and failed requests for 200 interleaved embedding requests over 2 and 4 models,
with 1, 2 and 4 workers on one Redis (one folder for all, one model slot per worker, no CPU cache: every switch
is a real load), 16 requests in flight.

    python -m bench scaleout           # tiny embedding models (the routing, not the compute, is measured)
    python -m bench scaleout --smoke   # 2 models, 1 and 2 workers, 40 requests

It starts its own redis-server, API and workers (as tests/stack.py does), prints a table and writes JSON to
bench/results/scaleout.json (scaleout-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.util import machine, output_path, write_json
from tests.model_factory import make_qwen3_embedding
from tests.stack import RedisServer, Stack, wait_until


@dataclass(frozen=True)
class Plan:
    models: tuple[int, ...]
    workers: tuple[int, ...]
    requests: int
    concurrency: int


FULL = Plan(models=(2, 4), workers=(1, 2, 4), requests=200, concurrency=16)
SMOKE = Plan(models=(2,), workers=(1, 2), requests=40, concurrency=8)


def build(root: Path, count: int) -> list[str]:
    names = [f"embedder-{i}" for i in range(count)]
    for i, name in enumerate(names):
        make_qwen3_embedding(root / name, seed=i + 1)
    return names


def run_one(root: Path, models: list[str], workers: int, plan: Plan) -> dict[str, Any]:
    redis = RedisServer(root / f"redis-{len(models)}-{workers}")
    redis.start()
    stack = Stack(redis.url, root / "models", root / f"logs-{len(models)}-{workers}",
                  env_extra={"LLM_MODEL_CACHE_SIZE": "1", "LLM_CPU_CACHE_GB": "0", "LLM_WORKER_HEARTBEAT_S": "0.5"})
    try:
        stack.start_api()
        for n in range(workers):
            stack.start_worker(LLM_WORKER_ID=f"w{n + 1}")
        wait_until(lambda: len(stack.health().get("workers", [])) == workers, 120, "the workers registered")
        requests = [(models[i % len(models)], f"request {i} about rivers") for i in range(plan.requests)]

        def one(request: tuple[str, str]) -> int:
            response = httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": request[0], "input": request[1]},
                                  timeout=300)
            return response.status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(plan.concurrency) as pool:
            statuses = list(pool.map(one, requests))
        wall = time.perf_counter() - started
        time.sleep(1.5)  # the last loads in a heartbeat, past the API's one-second cache
        stats: Any = stack.health()["workers"]
        loads = {w["id"]: int(w["stats"].get("model_loads", 0)) for w in stats}
        return {"models": len(models), "workers": workers, "requests": plan.requests, "wall_s": round(wall, 2),
                "loads": sum(loads.values()), "loads_per_worker": loads,
                "failed": sum(1 for s in statuses if s != 200)}
    finally:
        stack.stop()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(tmp)
        names = build(root / "models", max(plan.models))
        for count in plan.models:
            for workers in plan.workers:
                rows.append(run_one(root, names[:count], workers, plan))
                r = rows[-1]
                print(f"{r['models']} models, {r['workers']} workers: {r['wall_s']:>6.2f} s, {r['loads']:>3} loads "
                      f"{r['loads_per_worker']}, {r['failed']} failed", flush=True)
    write_json(output_path("scaleout", args.smoke, args.out), {"plan": asdict(plan), "machine": machine(),
                                                               "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
