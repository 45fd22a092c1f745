"""The plots of `python -m bench report`: one figure per benchmark, ours against the baseline of the same run.

Each function takes matplotlib's pyplot and the parsed JSON (the dict bench/NAME.py wrote) and returns a figure;
the report saves it as a PNG beside docs/benchmarks.md. A shape it does not know raises, and the report goes on
without that plot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.report_tables import tools_summary

OURS, BASELINE, OTHER = "tab:blue", "tab:grey", "tab:orange"


def bars(ax: Any, labels: list[str], groups: dict[str, list[float]], colours: list[str]) -> None:
    """Grouped bars: one group per label, one bar per series in `groups`."""
    width = 0.8 / max(len(groups), 1)
    for n, ((name, values), colour) in enumerate(zip(groups.items(), colours, strict=False)):
        ax.bar([i + (n - (len(groups) - 1) / 2) * width for i in range(len(labels))], values, width, label=name,
               color=colour)
    ax.set_xticks(range(len(labels)), labels)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def log_x(ax: Any, values: list[int]) -> None:
    """A log x axis labelled at the measured values only."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def dispatch(plt: Any, r: dict[str, Any]) -> Any:
    rows = r["rows"]
    clients = [x["clients"] for x in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for q, style in (("p50", "o-"), ("p99", "^:")):
        ax.plot(clients, [x["stack"][q] for x in rows], style, color=OURS, label=f"stack {q}")
        ax.plot(clients, [max(x["direct"][q], 1e-3) for x in rows], style, color=BASELINE, label=f"in-process {q}")
    ax.set(yscale="log", xlabel="concurrent clients", ylabel="latency ms (log)",
           title="Dispatch: latency per request, no-op engine")
    log_x(ax, clients)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def embeddings(plt: Any, r: dict[str, Any]) -> Any:
    rows = r["rows"]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [x["path"].removeprefix("stack: ").replace(", ", ",\n").replace(" (in process)", "") for x in rows]
    drawn = ax.bar(labels, [x["texts_per_s"] for x in rows], color=[BASELINE, *[OURS] * (len(rows) - 1)])
    for bar, x in zip(drawn, rows, strict=True):
        ax.annotate(f"{x['ratio']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=9)
    ax.set(ylabel="texts / s", title=f"Embeddings ({r['plan']['model']}): the stack vs SentenceTransformer.encode")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def chat(plt: Any, r: dict[str, Any]) -> Any:
    rows = r["rows"]
    streams = [x["concurrency"] for x in rows]
    fig, (thr, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    sides = [("ours", "o-", OURS, "ours (in-process)"), ("ours_processes", "^-", OTHER, "ours (vLLM's processes)"),
             ("vllm", "s--", BASELINE, "vLLM's server")]
    for key, style, color, label in sides:
        if all(key in x for x in rows):
            thr.plot(streams, [x[key]["tokens_per_s"] for x in rows], style, color=color, label=label)
            ttft.plot(streams, [x[key]["ttft_ms_p50"] for x in rows], style, color=color, label=label)
    thr.set(xlabel="concurrent streams", ylabel="tokens / s", title="Chat throughput")
    ttft.set(xlabel="concurrent streams", ylabel="TTFT p50 ms", title="Time to first token")
    for ax in (thr, ttft):
        log_x(ax, streams)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def rerank(plt: Any, r: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(["stack", "CrossEncoder.predict"], [r["stack_pairs_per_s"], r["cross_encoder_pairs_per_s"]],
           color=[OURS, BASELINE])
    ax.set(ylabel="pairs / s", title=f"Rerank: {r['ratio']:.2f}x CrossEncoder")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def batch(plt: Any, r: dict[str, Any]) -> Any:
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(10, 4))
    thr.bar(["one batch", "interactive"], [r["batch_inputs_per_s"], r["interactive_inputs_per_s"]],
            color=[OURS, BASELINE])
    thr.set(ylabel="inputs / s", title=f"Batch API throughput: {r['ratio_batch_over_interactive']:.2f}x")
    thr.grid(True, axis="y", alpha=0.3)
    idle, busy = r["latency_idle_ms"], r["latency_during_batch_ms"]
    bars(lat, ["p50", "p95"], {"idle": [idle["p50"], idle["p95"]], "during a batch": [busy["p50"], busy["p95"]]},
         [BASELINE, OURS])
    lat.set(ylabel="ms", title="Interactive latency under batch load")
    return fig


def fairness(plt: Any, r: dict[str, Any]) -> Any:
    idle, busy = r["idle_ms"], r["during_big_request_ms"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    qs = ["p50", "p95", "p99"]
    bars(ax, qs, {"nothing else running": [idle[q] for q in qs], "during the big request": [busy[q] for q in qs]},
         [BASELINE, OURS])
    ax.set(ylabel="ms", title=f"One-text latency beside a big request (p99 {r['p99_over_idle']:.2f}x idle)")
    return fig


def switching(plt: Any, r: dict[str, Any]) -> Any:
    raw, sw, warm = r["raw_transformers"], r["switch"], r["warm_switch"]
    fig, (times, loads) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["raw load\n+ one text", "cold switch", "warm switch", "warm request"]
    values = [raw["load_and_one_text_ms_median"], sw["switch_request_ms_median"], warm["switch_request_ms_median"],
              sw["warm_request_ms_median"]]
    times.bar(labels, values, color=[BASELINE, OURS, OURS, OTHER])
    times.set(yscale="log", ylabel="ms (log), median", title="Switch times")
    times.grid(True, axis="y", alpha=0.3)
    inter = r["interleaved"]
    names = [f"cache {x['cache_size']}{', parking' if x['cpu_cache'] else ''}\n{x['in_flight']} in flight"
             for x in inter]
    loads.bar(names, [x["loads_per_100"] for x in inter], color=OURS)
    loads.set(ylabel="loads per 100 requests", title="Interleaved requests over two models")
    loads.tick_params(axis="x", labelsize=7)
    loads.grid(True, axis="y", alpha=0.3)
    return fig


def recovery(plt: Any, r: dict[str, Any]) -> Any:
    settings = r["settings"]
    labels = [f"heartbeat {x['heartbeat_s']} s" for x in settings]
    fig, ax = plt.subplots(figsize=(6.5, 4))

    def of(key: str, stat: str) -> list[float]:
        return [x[key][stat] or 0.0 for x in settings]

    bars(ax, labels, {"first reclaimed answer (median)": of("first_reclaimed_answer_s", "median"),
                      "last reclaimed answer (median)": of("last_reclaimed_answer_s", "median"),
                      "last reclaimed answer (max)": of("last_reclaimed_answer_s", "max")},
         [OURS, OTHER, BASELINE])
    ax.set(ylabel="s after the kill", title="Recovery after a worker is SIGKILLed")
    return fig


def scaleout(plt: Any, r: dict[str, Any]) -> Any:
    rows = r["rows"]
    workers = sorted({x["workers"] for x in rows})
    models = sorted({x["models"] for x in rows})
    cell = {(x["models"], x["workers"]): x for x in rows}
    fig, (loads, wall) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{m} models" for m in models]
    colours = [OURS, OTHER, BASELINE, "tab:green"]
    for ax, key, title in ((loads, "loads", "Model loads per scenario"), (wall, "wall_s", "Wall time")):
        bars(ax, labels, {f"{w} worker(s)": [cell[(m, w)][key] if (m, w) in cell else 0 for m in models]
                          for w in workers}, colours)
        ax.set(ylabel="loads" if key == "loads" else "s", title=f"{title} ({rows[0]['requests']} requests)")
    return fig


def tools(plt: Any, r: dict[str, Any]) -> Any:
    summary = tools_summary(r)
    modes = list(summary)
    fig, (lat, per) = plt.subplots(1, 2, figsize=(10, 4))
    bars(lat, modes, {"p50": [summary[m]["p50"] for m in modes], "p95": [summary[m]["p95"] for m in modes]},
         [OURS, OTHER])
    lat.set(ylabel="ms", title="Request latency per mode")
    per.bar(modes, [summary[m]["ms_per_token"] for m in modes],
            color=[BASELINE if m == "no tools" else OURS for m in modes])
    per.set(ylabel="ms per completion token", title="Cost per token")
    per.grid(True, axis="y", alpha=0.3)
    return fig


def gpu(plt: Any, r: dict[str, Any]) -> Any:
    speedups = {name: r[section][key] for name, section, key in (
        ("embedding\nsorted / naive", "embedding", "speedup_sorted_over_naive"),
        ("rerank\nsorted / naive", "rerank", "speedup_sorted_over_naive"),
        ("chat\nengine / generate", "chat_transformers", "throughput_ratio")) if section in r}
    switch = r.get("switching", {})
    fig, (ratios, times) = plt.subplots(1, 2, figsize=(11, 4))
    ratios.bar(list(speedups), list(speedups.values()), color=OURS)
    ratios.axhline(1.0, color=BASELINE, linestyle="--", linewidth=1)
    ratios.set(ylabel="ours / baseline (higher is better)", title="GPU: throughput ratios")
    ratios.grid(True, axis="y", alpha=0.3)
    if switch:
        bars(times, list(switch), {label: [s[key] for s in switch.values()] for label, key in (
            ("cold load", "cold_load_s"), ("reload, page cache warm", "reload_page_cache_warm_s"),
            ("restore pinned copy", "restore_pinned_s"), ("engine.wake", "engine_wake_s"))},
             [BASELINE, OTHER, OURS, "tab:green"])
        times.set(yscale="log", ylabel="s (log)", title="GPU: switch times per model")
    else:
        packed_bars(times, r.get("packed") or {})
    return fig


def packed_bars(ax: Any, packed: dict[str, Any]) -> None:
    """bench/gpu_packed.py's eager variants, each model's tokens/s over its padded batches'."""
    names = ("padded_fused_norms", "padded_fused", "packed_fused", "packed", "packed_fused_norms")
    models = {m.replace("_", " "): s["eager"] for m, s in packed.items()
              if "tokens_per_s" in s["eager"].get("padded", {})}
    bars(ax, list(models), {n.replace("_", " "): [e[n]["tokens_per_s"] / e["padded"]["tokens_per_s"]
                                                  if "tokens_per_s" in e.get(n, {}) else 0 for e in models.values()]
                            for n in names if any(n in e for e in models.values())},
         [BASELINE, OTHER, OURS, "tab:green", "tab:purple"])
    ax.axhline(1.0, color=BASELINE, linestyle="--", linewidth=1)
    ax.set(ylabel="tokens/s over padded eager batches", title="GPU: padding-free, fused norms and rotary (eager)")


def gpu_check(plt: Any, r: dict[str, Any]) -> Any:
    models = r["coresident"]["models"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars(ax, list(models), {"planned": [x["planned_gpu_bytes"] / 2**30 for x in models.values()],
                            "measured": [x["measured_after_batch_bytes"] / 2**30 for x in models.values()]},
         [BASELINE, OURS])
    ax.set(ylabel="GiB", title="Memory plan: planned vs measured GPU bytes")
    return fig


PLOTS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "dispatch": dispatch, "embeddings": embeddings, "chat": chat, "rerank": rerank, "batch": batch,
    "fairness": fairness, "switching": switching, "recovery": recovery, "scaleout": scaleout, "tools": tools,
    "gpu": gpu, "gpu_check": gpu_check}
