"""One entry point for the benchmarks: `python -m bench NAME [--smoke] [the benchmark's own options]`.

    python -m bench dispatch      # service overhead per request, no-op engine, 1/16/64/256 clients
    python -m bench embeddings    # the stack vs SentenceTransformer.encode (all-MiniLM-L6-v2, 2,000 texts)
    python -m bench chat          # the stack vs vLLM's own server, 1/8/32/64 streams, CPU per token
    python -m bench rerank        # the stack vs CrossEncoder.predict
    python -m bench batch         # the Batch API vs interactive requests, latency under a batch
    python -m bench fairness      # one-text latency while a 2,048-text request runs, vs idle
    python -m bench switching     # model switch time vs a raw load; loads per 100 interleaved requests
    python -m bench recovery      # a worker SIGKILLed under 32 clients: time to reclaimed answers, failures
    python -m bench scaleout      # loads and wall time, 2 and 4 models over 1, 2 and 4 workers
    python -m bench tools         # tool calling (auto, required) vs the same requests without tools, on vLLM
    python -m bench gpu           # the GPU script: engines in-process on CUDA (--smoke: tiny shapes, CPU)
    python -m bench gpu_check     # the memory plan on a GPU: planned vs measured bytes, park/wake, offload
    python -m bench all --smoke   # every one in turn (each in its own process); CI runs this mode
    python -m bench report        # not a benchmark: bench/reference/ (or --results DIR) -> docs/benchmarks.md

Each run prints a table and writes JSON (and for some a PNG plot) to bench/results/; `python -m bench.NAME`
still works. `all` without --smoke runs `gpu` only where CUDA is available.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

BENCHMARKS = ("dispatch", "embeddings", "chat", "rerank", "batch", "fairness", "switching", "recovery", "scaleout",
              "tools", "gpu", "gpu_check")
GPU_ONLY = ("gpu", "gpu_check")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def run_all(args: list[str]) -> int:
    smoke = "--smoke" in args
    failed: list[str] = []
    for name in BENCHMARKS:
        if name in GPU_ONLY and not smoke and not cuda_available():
            print(f"== {name}: skipped (no CUDA device; `python -m bench {name} --smoke` runs it on the CPU)")
            continue
        print(f"== {name} {' '.join(args)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *args])
        print(f"== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHMARKS, "all", "report"):
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all(rest)
    if name == "report":
        from bench.report import main as report

        return report(rest)
    module = importlib.import_module(f"bench.{name}")
    sys.argv = [f"python -m bench {name}", *rest]
    code = module.main()
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
