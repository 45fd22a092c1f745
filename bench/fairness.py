"""No request stuck behind another: latency of one-text embedding requests while a 2,048-text request runs,
against the same requests with nothing else running, alternating in one run (goal: p99 <= 2x idle).

    python -m bench fairness           # all-MiniLM-L6-v2; 2,048 texts of 200 words in the big request
    python -m bench fairness --smoke   # the tiny test embedding model, smaller (seconds)

It starts its own redis-server, worker and API (as tests/stack.py does), prints a table and writes JSON to
bench/results/fairness.json (fairness-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.util import distribution, machine, output_path, write_json
from tests.model_factory import _WORDS, copy_minilm, make_qwen3_embedding
from tests.stack import RedisServer, Stack


@dataclass(frozen=True)
class Plan:
    model: str
    big_texts: int
    big_words: int
    probes: int  # one-text requests per measurement, one at a time
    repeats: int  # idle / loaded pairs, alternating


FULL = Plan(model="all-minilm-l6-v2", big_texts=2048, big_words=200, probes=40, repeats=2)
SMOKE = Plan(model="tiny-qwen3-embedding", big_texts=2048, big_words=60, probes=8, repeats=1)


def probe(client: httpx.Client, model: str, count: int, busy: threading.Event | None = None) -> list[float]:
    """Milliseconds of `count` one-text requests, one after another (while `busy` is set, if given)."""
    out = []
    rng = random.Random(len(out))
    for _ in range(count):
        if busy is not None and not busy.is_set():
            break
        text = " ".join(rng.choices(_WORDS, k=8))
        started = time.perf_counter()
        client.post("/v1/embeddings", json={"model": model, "input": text}).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


def loaded(client: httpx.Client, plan: Plan) -> tuple[list[float], float]:
    """Probes while the big request runs; and how long the big request took."""
    rng = random.Random(1)
    texts = [" ".join(rng.choices(_WORDS, k=plan.big_words)) for _ in range(plan.big_texts)]
    busy, took = threading.Event(), [0.0]

    def big() -> None:
        started = time.perf_counter()
        busy.set()
        client.post("/v1/embeddings", json={"model": plan.model, "input": texts,
                                            "encoding_format": "base64"}).raise_for_status()
        took[0] = time.perf_counter() - started
        busy.clear()

    thread = threading.Thread(target=big)
    thread.start()
    busy.wait()
    time.sleep(0.5)  # the big request admitted and running
    latencies = probe(client, plan.model, plan.probes, busy)
    thread.join()
    return latencies, took[0]


def measure(plan: Plan, root: Path) -> dict[str, Any]:
    models = root / "models"
    (copy_minilm if plan.model == "all-minilm-l6-v2" else make_qwen3_embedding)(models / plan.model)
    redis = RedisServer(root / "redis")
    redis.start()
    stack = Stack(redis.url, models, root / "logs")
    try:
        stack.start(expect_models=1)
        idle, busy, big_s = [], [], []
        with httpx.Client(base_url=stack.base_url, timeout=600,
                          limits=httpx.Limits(max_connections=4, max_keepalive_connections=4)) as client:
            probe(client, plan.model, 5)  # warm: model loaded, tokenizer cached
            for _ in range(plan.repeats):
                idle += probe(client, plan.model, plan.probes)
                latencies, seconds = loaded(client, plan)
                busy += latencies
                big_s.append(round(seconds, 2))
        result = {"plan": asdict(plan), "machine": machine(), "idle_ms": distribution(idle),
                  "during_big_request_ms": distribution(busy), "big_request_s": big_s}
        result["p99_over_idle"] = round(result["during_big_request_ms"]["p99"] / result["idle_ms"]["p99"], 2)
        result["p50_over_idle"] = round(result["during_big_request_ms"]["p50"] / result["idle_ms"]["p50"], 2)
        result["goal_p99_within_2x"] = result["p99_over_idle"] <= 2.0
        return result
    finally:
        stack.stop()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        result = measure(plan, Path(tmp))
    i, b = result["idle_ms"], result["during_big_request_ms"]
    print(f"one-text requests ({plan.model}), ms   {'p50':>8} {'p99':>8}   n")
    print(f"  nothing else running             {i['p50']:>8.1f} {i['p99']:>8.1f} {i['n']:>4}")
    print(f"  while {plan.big_texts} texts x {plan.big_words} words run {b['p50']:>8.1f} {b['p99']:>8.1f} {b['n']:>4}")
    print(f"  p99 {result['p99_over_idle']}x idle (goal <= 2x: {result['goal_p99_within_2x']}); the big request "
          f"took {result['big_request_s']} s")
    write_json(output_path("fairness", args.smoke, args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
