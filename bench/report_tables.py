"""The tables of `python -m bench report`: per benchmark, its headline figures from the JSON its module writes
(the dict each bench/NAME.py passes to write_json), ours against the baseline measured in the same run.

Each renderer takes the parsed JSON and returns Markdown lines; a shape it does not know raises (KeyError,
TypeError, ...) and the report falls back to `generic`, a table of every numeric leaf.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import Any

Lines = list[str]
GENERIC_MAX_ROWS = 80
SKIPPED_KEYS = ("machine", "load_avg_at_start")  # on the run's own line already


def fmt(value: Any) -> str:
    """A cell: thousands separators for large numbers, about three significant digits for small ones."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        size = abs(value)
        if size >= 100:
            return f"{value:,.0f}"
        if size >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if size >= 0.01 or size == 0 else f"{value:.2g}"
    return str(value).replace("|", "\\|")


def ratio(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if abs(value) < 10 else f"{value:.1f}x" if abs(value) < 100 else f"{value:,.0f}x"


def whole(value: float) -> float | int:
    """A median of counts: an int when it is one."""
    return int(value) if float(value).is_integer() else value


def table(header: list[str], rows: list[list[Any]]) -> Lines:
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in cells), ""]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def dispatch(r: dict[str, Any]) -> Lines:
    rows = [[x["clients"], x["requests_per_s"], x["stack"]["p50"], x["stack"]["p99"], x["direct"]["p50"],
             x["direct"]["p99"], x["added_ms"]["p50"], x["added_ms"]["p95"], x["added_ms"]["p99"]] for x in r["rows"]]
    lines = table(["clients", "stack req/s", "stack p50 ms", "stack p99 ms", "in-process p50 ms", "in-process p99 ms",
                   "added p50 ms", "added p95 ms", "added p99 ms"], rows)
    goal = r.get("goal", {})
    if goal.get("measured"):
        lines += [f"Goal at {goal['clients']} clients: added p50 <= {goal['p50_goal_ms']} ms: "
                  f"{fmt(goal['p50_met'])}; added p99 <= {goal['p99_goal_ms']} ms: {fmt(goal['p99_met'])}.", ""]
    return lines


def embeddings(r: dict[str, Any]) -> Lines:
    rows = [[x["path"], x["texts_per_s"], x["tokens_per_s"], ratio(x["ratio"]),
             " ".join(f"{p:.2f}" for p in x.get("paired_ratios", [])) or "-"] for x in r["rows"]]
    return [*table(["path", "texts/s", "tokens/s", "ratio vs SentenceTransformer", "paired ratios"], rows),
            f"Model {r['plan']['model']}, {r['texts']} texts ({fmt(r['tokens'])} tokens); vectors: min cosine "
            f"similarity to sentence-transformers' {r['min_cosine_vs_sentence_transformers']}.", ""]


def chat(r: dict[str, Any]) -> Lines:
    def side(x: dict[str, Any], name: str, key: str) -> Any:
        return x[name][key] if name in x else "-"

    rows = [[x["concurrency"], side(x, "ours", "tokens_per_s"), side(x, "ours_processes", "tokens_per_s"),
             x["vllm"]["tokens_per_s"], ratio(x["throughput_ratio"]),
             ratio(x["ours_processes_ratio"]) if "ours_processes_ratio" in x else "-",
             side(x, "ours", "ttft_ms_p50"), side(x, "ours_processes", "ttft_ms_p50"), x["vllm"]["ttft_ms_p50"],
             f"{x['ours']['chunks_per_1k_tokens']:.0f} / {x['vllm']['chunks_per_1k_tokens']:.0f}"] for x in r["rows"]]
    cpu = [[x["concurrency"], *(_cpu_cell(x["cpu_s_per_1k_tokens"].get(s, {}), n)
                                for s in ("ours", "ours_processes") for n in ("api", "worker", "redis")),
            _cpu_cell(x["cpu_s_per_1k_tokens"]["vllm"], "vllm server")] for x in r["rows"]]
    return [*table(["streams", "ours tokens/s (in-process)", "ours tokens/s (vLLM's processes)",
                    "vLLM server tokens/s", "ratio in-process", "ratio processes", "TTFT p50 ms in-process",
                    "TTFT p50 ms processes", "TTFT p50 ms vLLM", "SSE chunks / 1k tokens (ours / vLLM)"], rows),
            "Server CPU seconds per 1,000 streamed tokens, by process (ours in-process, ours with vLLM's "
            "processes, vLLM's server with its engine process):", "",
            *table(["streams", "API", "worker", "Redis", "API", "worker (+ engine)", "Redis", "vLLM server"], cpu),
            f"Model: {r['model']}. Baseline: {r['baseline']}. Medians of {r['rounds']} alternating rounds, "
            f"{r['max_tokens']} tokens a stream.", ""]


def _cpu_cell(cpu: dict[str, float], name: str) -> str:
    return f"{cpu[name]:.3f}" if name in cpu else "-"


def rerank(r: dict[str, Any]) -> Lines:
    plan = r["plan"]
    return [*table(["path", "pairs/s", "ratio"], [
        ["stack (HTTP -> Redis -> worker)", r["stack_pairs_per_s"], ratio(r["ratio"])],
        ["CrossEncoder.predict (in process)", r["cross_encoder_pairs_per_s"], ratio(1.0)]]),
        f"Model: {plan['model_size']}; {r['pairs']} pairs ({plan['requests']} requests x "
        f"{plan['docs_per_request']} documents, {plan['concurrency']} in flight), median of {plan['repeats']}.", ""]


def batch(r: dict[str, Any]) -> Lines:
    idle, busy = r["latency_idle_ms"], r["latency_during_batch_ms"]
    return [*table(["path", "inputs/s", "ratio"], [
        ["one batch (create -> completed)", r["batch_inputs_per_s"], ratio(r["ratio_batch_over_interactive"])],
        [f"interactive requests ({r['plan']['concurrency']} in flight)", r["interactive_inputs_per_s"], ratio(1.0)]]),
        *table(["one-input request, one at a time", "p50 ms", "p95 ms"], [
            ["nothing else running", idle["p50"], idle["p95"]], ["while a batch runs", busy["p50"], busy["p95"]],
            ["ratio", ratio(busy["p50"] / idle["p50"]), ratio(busy["p95"] / idle["p95"])]]),
        f"Model {r['plan']['model']}, {r['plan']['inputs']} inputs; the batch finished "
        f"{r['batch_lines_done_during_probe']} lines during the probe.", ""]


def fairness(r: dict[str, Any]) -> Lines:
    plan, idle, busy = r["plan"], r["idle_ms"], r["during_big_request_ms"]
    rows = [["nothing else running", idle["p50"], idle["p95"], idle["p99"], idle["n"]],
            [f"while {fmt(plan['big_texts'])} texts x {plan['big_words']} words run", busy["p50"], busy["p95"],
             busy["p99"], busy["n"]],
            ["ratio", ratio(r["p50_over_idle"]), ratio(busy["p95"] / idle["p95"]), ratio(r["p99_over_idle"]), ""]]
    return [*table(["one-text request", "p50 ms", "p95 ms", "p99 ms", "n"], rows),
            f"Model {plan['model']}; goal p99 <= 2x idle: {fmt(r['goal_p99_within_2x'])}; the big request took "
            f"{', '.join(fmt(s) for s in r['big_request_s'])} s.", ""]


def switching(r: dict[str, Any]) -> Lines:
    raw, sw, warm = r["raw_transformers"], r["switch"], r["warm_switch"]
    rows: list[list[Any]] = [["raw transformers load (tokenizer + weights)", raw["load_ms_median"], ""],
                             ["raw load + one text (the baseline)", raw["load_and_one_text_ms_median"], ratio(1.0)],
                             ["cold switch (evict + load from disk + serve)", sw["switch_request_ms_median"],
                              ratio(r["switch_over_raw_load_and_serve"])],
                             ["warm switch (parked model back)", warm["switch_request_ms_median"],
                              ratio(warm["switch_request_ms_median"] / raw["load_and_one_text_ms_median"])],
                             ["warm request (model loaded)", sw["warm_request_ms_median"],
                              ratio(sw["warm_request_ms_median"] / raw["load_and_one_text_ms_median"])]]
    inter = [[x["cache_size"], fmt(x["cpu_cache"]), x["in_flight"], x["loads_per_100"], x["requests_per_s"]]
             for x in r["interleaved"]]
    return [*table(["request (medians)", "ms", "vs raw load + one text"], rows),
            f"Cold switch / raw load + one text: {ratio(r['switch_over_raw_load_and_serve'])} (goal <= 1.2x); warm "
            f"switch / cold switch: {ratio(r['warm_switch_over_cold_switch'])} (goal <= 0.3x). Models: "
            f"{r['plan']['base']}.", "",
            *table(["model cache size", "CPU parking", "in flight", "loads per 100 interleaved requests", "req/s"],
                   inter),
            *_chat_switches(r.get("vllm_chat", []))]


def _chat_switches(rows: list[dict[str, Any]]) -> Lines:
    if not rows:
        return []
    cells = [[x["mode"], x["first_load_s"], x["second_load_s"], x["switch_back_load_s"],
              *_switch_ms(x), " / ".join(f"{t:,.0f}" for t in x["request_ms"])] for x in rows]
    return ["vLLM chat models, one slot, requests A, B, A, B, ... (each after the first a switch; loads as the worker "
            "logs them; the first load also waits for what is left of the worker's warm-up at start: vLLM's imports "
            "and its inspection of the architecture, 10-30 s on this machine):", "",
            *table(["vLLM mode", "first cold load s (empty vLLM cache)", "second cold load s", "switch back s",
                    "switch request ms, median", "max", "request ms"], cells)]


def _switch_ms(row: dict[str, Any]) -> list[float]:
    """The switch requests' median and max: every request after the first (older runs have no such fields)."""
    times = row["request_ms"][1:]
    return [statistics.median(times), max(times)]


def recovery(r: dict[str, Any]) -> Lines:
    rows = [[x["heartbeat_s"], x["kills"], first["median"], first["max"], last["median"], last["max"],
             x["failed_per_kill"]["mean"], x["failed_per_kill"]["max"], x["requests_total"], x["failed_total"]]
            for x in r["settings"]
            for first, last in [(x["first_reclaimed_answer_s"], x["last_reclaimed_answer_s"])]]
    plan = r["plan"]
    return [*table(["heartbeat s", "kills", "first reclaimed answer s (median)", "(max)",
                    "last reclaimed answer s (median)", "(max)", "failed per kill (mean)", "(max)", "requests",
                    "failed"], rows),
            f"Model {plan['base']}; {plan['clients']} clients; one API, two workers, one SIGKILLed per kill.", ""]


def scaleout(r: dict[str, Any]) -> Lines:
    rows = [[x["models"], x["workers"], x["requests"], x["wall_s"], x["loads"],
             ", ".join(f"{k}: {v}" for k, v in x["loads_per_worker"].items()), x["failed"]] for x in r["rows"]]
    return table(["models", "workers", "requests", "wall s", "loads", "loads per worker", "failed"], rows)


def tools_summary(r: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per mode, the median over rounds of each headline figure."""
    return {mode: {"p50": median([x["latency_ms"]["p50"] for x in runs]),
                   "p95": median([x["latency_ms"]["p95"] for x in runs]),
                   "ms_per_token": median([x["ms_per_token"] for x in runs]),
                   "tokens_per_s": median([x["tokens_per_s"] for x in runs]),
                   "completion_tokens": median([x["completion_tokens"] for x in runs]),
                   "with_calls": median([x["with_calls"] for x in runs])}
            for mode, runs in r["runs"].items() if runs}


def tools(r: dict[str, Any]) -> Lines:
    summary = tools_summary(r)
    base = summary.get("no tools")
    rows = [[mode, s["p50"], s["p95"], s["ms_per_token"], s["tokens_per_s"], whole(s["completion_tokens"]),
             whole(s["with_calls"]),
             ratio(s["p50"] / base["p50"]) if base else "-"] for mode, s in summary.items()]
    return [*table(["mode", "latency p50 ms", "p95 ms", "ms per completion token", "completion tokens/s",
                    "completion tokens", "with calls", "p50 vs no tools"], rows),
            f"Model {r['model']} on {r['engine']}; {r['requests']} requests per round, {r['concurrency']} in flight, "
            f"medians over {r['rounds']} round(s).", ""]


def gpu_rows(r: dict[str, Any]) -> Iterator[list[Any]]:
    e, rr, ch = r.get("embedding"), r.get("rerank"), r.get("chat_transformers")
    if e:
        yield ["embedding tokens/s: engine (sorted batches) vs unsorted batches of fixed size",
               e["sorted_tokens_per_s"], e["naive_tokens_per_s"], ratio(e["speedup_sorted_over_naive"])]
        nm = e.get("no_padding_mask")
        if nm:
            yield ["embedding tokens/s without the padding mask", nm["sorted_tokens_per_s"], e["sorted_tokens_per_s"],
                   ratio(nm["sorted_tokens_per_s"] / e["sorted_tokens_per_s"])]
    compiled = r.get("embedding_compiled") or {}
    if e and "sorted_tokens_per_s" in compiled:
        yield ["embedding tokens/s, torch.compile per layer", compiled["sorted_tokens_per_s"],
               e["sorted_tokens_per_s"], ratio(compiled["sorted_tokens_per_s"] / e["sorted_tokens_per_s"])]
    if rr:
        yield ["rerank pairs/s: engine (sorted batches) vs unsorted batches of 32", rr["sorted_pairs_per_s"],
               rr["naive_pairs_per_s"], ratio(rr["speedup_sorted_over_naive"])]
    if ch:
        yield ["chat tokens/s, one stream: engine vs model.generate", ch["engine_tokens_per_s"],
               ch["raw_generate_tokens_per_s"], ratio(ch["throughput_ratio"])]
        yield ["chat TTFT ms: engine vs model.generate", ch["engine_ttft_ms"], ch["raw_ttft_ms"],
               ratio(ch["engine_ttft_ms"] / ch["raw_ttft_ms"]) if ch["raw_ttft_ms"] else "-"]
    sc = r.get("scheduler")
    if sc:
        yield ["scheduler: warm switch back vs cold switch (ms)", sc["warm_switch_back_ms_median"],
               sc["cold_switch_ms_median"], ratio(sc["warm_over_cold"])]


def packed_rows(r: dict[str, Any]) -> Iterator[list[Any]]:
    """bench/gpu_packed.py: each variant of each model against its padded eager batches."""
    for model, section in (r.get("packed") or {}).items():
        runs = {f"eager, {k}": v for k, v in section.get("eager", {}).items()}
        runs.update({f"compiled, {k}": v for k, v in section.get("compiled", {}).items() if isinstance(v, dict)})
        base = runs.get("eager, padded", {}).get("tokens_per_s")
        for name, row in runs.items():
            if name != "eager, padded" and base and "tokens_per_s" in row:
                yield [f"{model.replace('_', ' ')} tokens/s, {name.replace('_', ' ')} vs eager padded (max cosine "
                       f"gap {row['max_cosine_gap_vs_padded']:.1e})", row["tokens_per_s"], base,
                       ratio(row["tokens_per_s"] / base)]


def gpu(r: dict[str, Any]) -> Lines:
    lines = table(["measure", "ours", "baseline", "ratio"], [*gpu_rows(r), *packed_rows(r)])
    switch = [[name, s["cold_load_s"], s["reload_page_cache_warm_s"], s["restore_pinned_s"], s["engine_wake_s"],
               ratio(s["cold_over_restore_pinned"])] for name, s in r.get("switching", {}).items()]
    if switch:
        lines += table(["switching (s)", "cold load", "reload (page cache warm)", "restore pinned copy",
                        "engine.wake", "cold / pinned restore"], switch)
    e = r.get("embedding") or {}
    if "goal_tokens_per_s" in e:
        lines += [f"Embedding goal >= {e['goal_tokens_per_s']:,} tokens/s: {fmt(e['goal_met'])}.", ""]
    if not r.get("complete", True):
        lines += ["The run stopped early: only the sections above were measured.", ""]
    return lines


def gpu_check(r: dict[str, Any]) -> Lines:
    together = r["coresident"]
    rows = [[name, x["type"], x["planned_gpu_bytes"] / 2**30, x["measured_after_batch_bytes"] / 2**30,
             ratio(x["ratio"]), fmt(x["within_10pct"])] for name, x in together["models"].items()]
    p, o = r["park_and_wake"], r["offload"]
    offload = o.get("skipped") or (f"budget {o['budget_gb']} GiB, offloaded {fmt(o['offloaded'])}, min cosine vs "
                                   f"the CPU {o['min_cosine_vs_cpu']}")
    return [*table(["model", "type", "planned GPU GiB", "measured GiB (load + one batch)", "measured / planned",
                    "within 10 %"], rows),
            f"All resident together: {fmt(together['all_resident'])}. Park: {p['gpu_freed_bytes'] / 2**30:.2f} GiB "
            f"of GPU memory back, park {p['park_s']} s, wake {p['wake_s']} s, answers equal: "
            f"{fmt(p['answers_equal_after_wake'])}. Offload: {offload}.", ""]


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted path, number) for every numeric leaf of a JSON value (booleans excluded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not prefix and key in SKIPPED_KEYS:
                continue
            yield from leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{prefix}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix, value


def generic(r: dict[str, Any]) -> Lines:
    """Any shape: its numeric leaves, flattened (the first GENERIC_MAX_ROWS)."""
    found = list(leaves(r))
    lines = table(["field", "value"], [[f"`{path}`", value] for path, value in found[:GENERIC_MAX_ROWS]])
    if len(found) > GENERIC_MAX_ROWS:
        lines += [f"... and {len(found) - GENERIC_MAX_ROWS} more numbers in the JSON.", ""]
    return lines if found else ["No numbers in this file.", ""]


TABLES: dict[str, Callable[[dict[str, Any]], Lines]] = {
    "dispatch": dispatch, "embeddings": embeddings, "chat": chat, "rerank": rerank, "batch": batch,
    "fairness": fairness, "switching": switching, "recovery": recovery, "scaleout": scaleout, "tools": tools,
    "gpu": gpu, "gpu_check": gpu_check}
