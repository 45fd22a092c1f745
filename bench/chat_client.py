"""The chat benchmarks' client: concurrent SSE streams over aiohttp (light, so that the client costs little of
the machine), and CPU seconds per process between two moments."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import psutil

from bench.util import pct


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell story {i} about {'dragons' if i % 2 else 'castles'}."}]
            for i in range(n)]


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, int, int]:
    """One streamed chat completion: (seconds to the first content, completion tokens, content chunks)."""
    start, ttft, tokens, chunks = time.perf_counter(), -1.0, 0, 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                chunks += 1
                if ttft < 0:
                    ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft, tokens, chunks


async def run_streams(url: str, model: str, concurrency: int, max_tokens: int, repeats: int = 1) -> dict[str, Any]:
    """`concurrency` streams at once, greedy, each exactly `max_tokens` long (ignore_eos); `repeats` times one
    after the other (time to first token from one stream alone is one sample otherwise)."""
    bodies = [{"model": model, "messages": m, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
               "stream": True, "stream_options": {"include_usage": True}} for m in prompts(concurrency)]
    connector = aiohttp.TCPConnector(limit=0)
    results: list[tuple[float, int, int]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        start = time.perf_counter()
        for _ in range(repeats):
            results += await asyncio.gather(*[stream(session, url, b) for b in bodies])
        wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    ttfts = [r[0] * 1000 for r in results if r[0] >= 0]
    return {"wall_s": round(wall, 4), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_ms_p50": round(statistics.median(ttfts), 3), "ttft_ms_p95": round(pct(ttfts, 0.95), 3),
            "chunks_per_1k_tokens": round(1000 * sum(r[2] for r in results) / max(tokens, 1), 1)}


class CpuMeter:
    """CPU seconds (user + system) of named processes, their children included, and of this process (the
    client), from construction to `per_1k_tokens`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.processes["client"] = psutil.Process()  # this process alone: the servers are its children
        self.start = {name: self._cpu(name) for name in self.processes}

    def per_1k_tokens(self, tokens: int) -> dict[str, float]:
        return {name: round(1000 * (self._cpu(name) - self.start[name]) / max(tokens, 1), 4)
                for name in self.processes}

    def _cpu(self, name: str) -> float:
        return _cpu(self.processes[name], children=name != "client")


def _cpu(process: psutil.Process, children: bool) -> float:
    """CPU seconds of a process and (when asked) its live children (a child that exited mid-run is lost; none
    do here)."""
    total = 0.0
    for p in [process, *(process.children(recursive=True) if children else [])]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total
