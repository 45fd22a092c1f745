"""Recovery after a worker is SIGKILLed under load (issue 7): how long until the jobs it held are answered
by the other worker, and how many requests fail.

Set-up per heartbeat setting (`LLM_WORKER_HEARTBEAT_S`, 1 s is the default): its own redis-server, one API,
two workers (tests/stack.py), an embedding model (pinned, so every worker loads it), and `clients` asyncio
tasks that each send embedding requests (a few texts) one after another, with a generous client timeout and
their own `X-Request-ID`.
After a warm-up (both workers have loaded the model and served), each kill goes:

1. note the requests in flight (sent, not answered) and SIGKILL the oldest living worker (worker 0 first,
   then the previous survivor: every victim is warm and has served a while);
2. from the kill until another worker has taken them over, poll the dead worker's pending entries in Redis
   (XPENDING for its consumer, `host-pid`, every 20 ms: its heartbeat key lives 2-3 beats more, and Redis
   may still hand a job sent just after the kill to its blocked read) and decode their jobs: their
   `request_id`s are exactly the requests another worker must reclaim (cross-checked with the survivor's
   `reclaimed` counter in GET /v1/health, read a few beats later);
3. keep the load running until every request in flight at the kill has an answer (or timed out);
4. start a replacement worker, wait until it has loaded the model, let it serve a moment, next kill.

Reported per setting: recovery time from the kill to the first and to the last answer of a reclaimed
request (median and max over the kills), requests failed per kill (any non-200 answer or client error or
timeout that completed between the kill and step 3's end; mean and max), and the requests in flight at each
kill, of which pending on the victim (the rest were queued in the stream or on the survivor: no reclaim).
A reclaim waits for the key to expire (2-3 beats after the kill) and the survivor's next sweep (up to 1
beat more), so expect about 2-4 beats plus the time to serve the reclaimed jobs next to the live load.

    python -m bench recovery            # all-MiniLM-L6-v2, 32 clients, 5 kills at heartbeat 1 s and 0.2 s
    python -m bench recovery --smoke    # a tiny test embedding model, 8 clients, 1 kill at 0.2 s (< 60 s)

Prints tables and writes JSON to bench/results/recovery.json (recovery-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.util import machine, output_path, write_json
from common import keys
from common.protocol import DATA_FIELD, Job
from tests.model_factory import copy_minilm, make_qwen3_embedding
from tests.stack import RedisServer, Stack

MODEL = "embedder"
STREAM = keys.job_stream("embedding", MODEL)
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "near", "the", "river", "bank")


@dataclass(frozen=True)
class Plan:
    base: str
    heartbeats: tuple[float, ...]
    kills: int
    clients: int
    texts: int
    settle_s: float  # load on both workers before a kill
    client_timeout_s: float


FULL = Plan(base="all-MiniLM-L6-v2", heartbeats=(1.0, 0.2), kills=5, clients=32, texts=4, settle_s=3.0,
            client_timeout_s=120.0)
SMOKE = Plan(base="tiny test Qwen3 embedding", heartbeats=(0.2,), kills=1, clients=8, texts=4, settle_s=1.0,
             client_timeout_s=30.0)


@dataclass
class Call:
    sent: float
    done: float | None = None
    status: str = ""  # "200", another HTTP status, or the client's exception ("ReadTimeout", ...)


class Load:
    """`clients` tasks sending embedding requests back to back; every call is recorded by request id."""

    def __init__(self, base_url: str, plan: Plan) -> None:
        self.base_url, self.plan = base_url, plan
        self.calls: dict[str, Call] = {}
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._client(i)) for i in range(self.plan.clients)]

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.plan.client_timeout_s,
                                     limits=limits) as http:
            n = 0
            while not self.stopping:
                request_id, n = f"recovery-{index}-{n}", n + 1
                call = self.calls[request_id] = Call(sent=time.perf_counter())
                call.status = await self._post(http, request_id, n)
                call.done = time.perf_counter()

    async def _post(self, http: httpx.AsyncClient, request_id: str, n: int) -> str:
        texts = [" ".join(WORDS[(n + i + k) % len(WORDS)] for k in range(8)) + f" {n}" for i in range(self.plan.texts)]
        try:
            response = await http.post("/v1/embeddings", json={"model": MODEL, "input": texts},
                                       headers={"X-Request-ID": request_id})
            return str(response.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def in_flight(self) -> set[str]:
        return {rid for rid, call in self.calls.items() if call.done is None}

    def failed(self, start: float, end: float) -> list[str]:
        return [c.status for c in self.calls.values()
                if c.done is not None and start <= c.done <= end and c.status != "200"]


def build_model(root: Path, smoke: bool) -> Path:
    if smoke:
        make_qwen3_embedding(root / MODEL, seed=1)
    else:
        copy_minilm(root / MODEL)
    return root


def consumer_of(proc: subprocess.Popen[bytes]) -> str:
    """The worker's consumer name (worker/transport.py default_worker_id: host-pid)."""
    return f"{socket.gethostname()}-{proc.pid}"


async def pending_request_ids(redis: Redis, consumer: str) -> set[str]:
    """The X-Request-IDs of the jobs pending on `consumer` (read, not yet answered)."""
    entries: Any = await redis.xpending_range(STREAM, keys.WORKER_GROUP, min="-", max="+", count=100_000,
                                              consumername=consumer)
    found = set()
    for entry in entries:
        for _, fields in await redis.xrange(STREAM, min=entry["message_id"], max=entry["message_id"]):
            found.add(Job.decode(fields[DATA_FIELD]).request_id or "?")
    return found


async def left_by(redis: Redis, consumer: str, timeout_s: float) -> set[str]:
    """Every job pending on the dead `consumer` until another worker has taken them over (its heartbeat key
    gone and nothing pending). Polled, because Redis may still hand a new job to the dead worker's blocked
    read until it sees the connection closed."""
    seen: set[str] = set()
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        gone = not await redis.exists(keys.worker_key(consumer))
        pending = await pending_request_ids(redis, consumer)
        seen |= pending
        if gone and not pending:
            return seen
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the jobs of {consumer} were not taken over in {timeout_s} s")


async def reclaimed_by_worker(http: httpx.AsyncClient) -> dict[str, int]:
    workers = (await http.get("/v1/health")).json()["workers"]
    return {w["id"]: int(w["stats"].get("reclaimed", 0)) for w in workers}


async def reclaim_counter(http: httpx.AsyncClient, before: dict[str, int], expected: int, timeout_s: float) -> int:
    """How many jobs the living workers' `reclaimed` counters grew by since `before`: polled until it reaches
    `expected` or `timeout_s` (the counters are published with the next heartbeats)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        counted = sum(n - before.get(w, 0) for w, n in (await reclaimed_by_worker(http)).items())
        if counted >= expected or time.perf_counter() > deadline:
            return counted
        await asyncio.sleep(0.1)


async def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def has_loaded(log: Path) -> bool:
    return log.is_file() and f"loaded {MODEL} in" in log.read_text(encoding="utf-8", errors="replace")


def seconds(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


async def one_kill(stack: Stack, redis: Redis, load: Load, http: httpx.AsyncClient,
                   heartbeat_s: float) -> dict[str, Any]:
    victim = next(p for p in stack.workers if p.poll() is None)
    before = await reclaimed_by_worker(http)
    in_flight = load.in_flight()
    killed = time.perf_counter()
    victim.kill()
    reclaimed = await left_by(redis, consumer_of(victim), 10 * heartbeat_s + 10)
    taken_over_s = time.perf_counter() - killed
    victim.wait()
    waited = in_flight | {r for r in reclaimed if r in load.calls}
    await wait_for(lambda: all(load.calls[r].done is not None for r in waited),
                   load.plan.client_timeout_s + 30, "the requests in flight at the kill")
    ended = time.perf_counter()
    counted = await reclaim_counter(http, before, len(reclaimed), 10 * heartbeat_s + 5)
    answers = [load.calls[r] for r in reclaimed if r in load.calls]
    ok = sorted(c.done - killed for c in answers if c.done is not None and c.status == "200")
    return {"victim": consumer_of(victim), "in_flight": len(in_flight), "pending_on_victim": len(reclaimed),
            "pending_sent_after_kill": sum(c.sent > killed for c in answers),
            "reclaimed_counter": counted,
            "first_reclaimed_answer_s": round(ok[0], 3) if ok else None,
            "last_reclaimed_answer_s": round(ok[-1], 3) if ok else None,
            "all_in_flight_answered_s": round(ended - killed, 3), "failed": len(load.failed(killed, ended)),
            "failed_statuses": sorted(set(load.failed(killed, ended))), "taken_over_s": round(taken_over_s, 3)}


async def replace(stack: Stack, plan: Plan) -> None:
    """A new worker, serving (model loaded) for `settle_s`."""
    stack.start_worker()
    log = stack.logdir / f"worker{len(stack.workers) - 1}.log"
    await wait_for(lambda: has_loaded(log), 180, "the replacement worker to load the model")
    await asyncio.sleep(plan.settle_s)


async def drive(stack: Stack, redis_url: str, plan: Plan,
                heartbeat_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    load = Load(stack.base_url, plan)
    redis = Redis.from_url(redis_url)
    kills: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        load.start()
        try:
            logs = [stack.logdir / f"worker{i}.log" for i in range(2)]
            await wait_for(lambda: all(has_loaded(log) for log in logs), 180, "both workers to load the model")
            await asyncio.sleep(plan.settle_s)
            for index in range(plan.kills):
                kills.append(await one_kill(stack, redis, load, http, heartbeat_s))
                print(f"  kill {index + 1}: {kills[-1]}", flush=True)
                if index + 1 < plan.kills:
                    await replace(stack, plan)
        finally:
            await load.stop()
            await redis.aclose()
    statuses = [c.status for c in load.calls.values() if c.done is not None]
    totals = {"requests": len(statuses), "failed": sum(s != "200" for s in statuses)}
    return kills, totals


def summarise(heartbeat: float, kills: list[dict[str, Any]], totals: dict[str, Any]) -> dict[str, Any]:
    first = [k["first_reclaimed_answer_s"] for k in kills if k["first_reclaimed_answer_s"] is not None]
    last = [k["last_reclaimed_answer_s"] for k in kills if k["last_reclaimed_answer_s"] is not None]
    failed = [k["failed"] for k in kills]
    return {"heartbeat_s": heartbeat, "kills": len(kills),
            "first_reclaimed_answer_s": {"median": round(statistics.median(first), 3) if first else None,
                                         "max": max(first) if first else None},
            "last_reclaimed_answer_s": {"median": round(statistics.median(last), 3) if last else None,
                                        "max": max(last) if last else None},
            "failed_per_kill": {"mean": round(statistics.fmean(failed), 2), "max": max(failed)},
            "in_flight_at_kill": [k["in_flight"] for k in kills],
            "pending_on_victim": [k["pending_on_victim"] for k in kills],
            "reclaimed_counter": [k["reclaimed_counter"] for k in kills],
            "requests_total": totals["requests"], "failed_total": totals["failed"], "per_kill": kills}


def one_setting(models: Path, workdir: Path, plan: Plan, heartbeat: float) -> dict[str, Any]:
    name = f"hb{heartbeat}"
    redis = RedisServer(workdir / f"redis-{name}")
    # Pinned: every worker loads the model at start. Unpinned, the second worker would load a copy only when the
    # first one left a job waiting `LLM_REPLICA_AFTER_S` (or by a race at the first cold load).
    stack = Stack(redis.url, models, workdir / f"logs-{name}",
                  env_extra={"LLM_WORKER_HEARTBEAT_S": str(heartbeat), "LLM_PINNED_MODELS": MODEL})
    try:
        redis.start()
        stack.start()
        stack.start_worker()
        kills, totals = asyncio.run(drive(stack, redis.url, plan, heartbeat))
    finally:
        stack.stop()
        redis.stop()
    return summarise(heartbeat, kills, totals)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(result: dict[str, Any]) -> None:
    host, plan = result["machine"], result["plan"]
    print(f"model: {plan['base']}; {plan['clients']} clients x {plan['texts']} texts; one API, two workers; "
          f"{host['cores']} cores, load {host['load_avg_at_start']}")
    print(f"{'heartbeat':>9} {'kills':>5} {'1st reclaimed s':>16} {'last reclaimed s':>17} {'failed/kill':>12}"
          f"  {'in flight at kill (pending on victim)'}")
    print(f"{'s':>9} {'':>5} {'median':>7} {'max':>8} {'median':>8} {'max':>8} {'mean':>6} {'max':>5}")
    for row in result["settings"]:
        first, last, failed = row["first_reclaimed_answer_s"], row["last_reclaimed_answer_s"], row["failed_per_kill"]
        flights = ", ".join(f"{n} ({p})" for n, p in zip(row["in_flight_at_kill"], row["pending_on_victim"],
                                                         strict=True))
        print(f"{row['heartbeat_s']:>9} {row['kills']:>5} {fmt(first['median']):>7} {fmt(first['max']):>8} "
              f"{fmt(last['median']):>8} {fmt(last['max']):>8} {failed['mean']:>6.2f} {failed['max']:>5}  {flights}")
    for row in result["settings"]:
        print(f"heartbeat {row['heartbeat_s']} s: {row['requests_total']} requests, {row['failed_total']} failed; "
              f"survivor's reclaimed counter per kill {row['reclaimed_counter']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 clients, one kill at heartbeat 0.2 s")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/recovery[-smoke].json)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    result: dict[str, Any] = {"benchmark": "recovery", "plan": asdict(plan), "machine": machine(), "settings": []}
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        models = build_model(Path(tmp) / "models", args.smoke)
        for heartbeat in plan.heartbeats:
            print(f"== LLM_WORKER_HEARTBEAT_S={heartbeat}", flush=True)
            result["settings"].append(one_setting(models, Path(tmp), plan, heartbeat))
    result["smoke"] = args.smoke
    print_table(result)
    write_json(output_path("recovery", args.smoke, args.out), result)


if __name__ == "__main__":
    main()
