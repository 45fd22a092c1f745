"""`python -m bench report`: the benchmarks' JSON results as a Markdown page with a table and a PNG plot each.

    python -m bench report                           # bench/reference/ -> docs/benchmarks.md (+ docs/benchmarks/)
    python -m bench report --results bench/results   # this checkout's own latest runs instead
    python -m bench report --results DIR --out PAGE.md

DIR holds NAME.json files (one section, named after DIR) or folders of them, one per kind of machine
(bench/reference/cpu-2core/, bench/reference/gpu-h100/, ...: one section per kind; see bench/reference/README.md).
Per benchmark: when, where and with what it ran (machine, versions, date), its headline table (ours against
the baseline measured in the same run), and a plot saved beside the page (PAGE's folder / PAGE's stem / KIND /
NAME.png). A file of a shape the report does not know gets a table of its numeric leaves. NAME-smoke.json is
shown only where no NAME.json sits beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report_plots import PLOTS
from bench.report_tables import TABLES, Lines, fmt, generic
from bench.util import pyplot, save_figure

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "reference"
PAGE = ROOT / "docs" / "benchmarks.md"
TITLES = {
    "dispatch": "Dispatch overhead: the whole stack against the same no-op engine awaited in-process",
    "embeddings": "Embeddings: the stack against SentenceTransformer.encode (same model, same texts)",
    "chat": "Chat streaming: the stack against vLLM's own OpenAI server (same model, prompts and client)",
    "rerank": "Rerank: the stack against CrossEncoder.predict (same model, same pairs)",
    "batch": "Batch API: one batch against interactive requests, and interactive latency under batch load",
    "fairness": "Fairness: one-text latency while a large request runs, against the same requests idle",
    "switching": "Model switching: switch times against a raw transformers load; loads per interleaved requests",
    "recovery": "Recovery: a worker SIGKILLed under load, time until its jobs are answered by another",
    "scaleout": "Scale-out: model loads and wall time, models x workers",
    "tools": "Tool calling: `auto` and `required` against the same requests without tools, on vLLM",
    "gpu": "GPU: the worker's engines in-process on CUDA against naive batching and model.generate",
    "gpu_check": "GPU check of the memory plan: planned against measured GPU bytes, park and wake, offload",
}
VERSION_KEYS = ("torch", "transformers", "vllm", "sentence_transformers")


@dataclass(frozen=True)
class Result:
    kind: str
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def smoke(self) -> bool:
        return bool(self.data.get("smoke")) or self.path.stem.endswith("-smoke")


def load(path: Path, kind: str) -> Result | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"skipped {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(data, dict):
        print(f"skipped {path}: not a JSON object", file=sys.stderr)
        return None
    named = data.get("benchmark")
    return Result(kind, named if isinstance(named, str) else path.stem.removesuffix("-smoke"), path, data)


def order(result: Result) -> tuple[int, str, bool]:
    known = list(TITLES)
    return (known.index(result.name) if result.name in known else len(known), result.name, result.smoke)


def collect(results: Path) -> dict[str, list[Result]]:
    """Kind -> its results in the benchmarks' order: DIR's own files under DIR's name, each folder's under its."""
    folders = [results, *sorted(p for p in results.iterdir() if p.is_dir())]
    kinds: dict[str, list[Result]] = {}
    for folder in folders:
        found = [r for p in sorted(folder.glob("*.json")) if (r := load(p, folder.name)) is not None]
        full = {r.name for r in found if not r.smoke}
        kept = sorted((r for r in found if not (r.smoke and r.name in full)), key=order)
        if kept:
            kinds[folder.name] = kept
    return kinds


def shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def run_line(result: Result) -> str:
    """When, where and with what the benchmark ran, from its `machine` (a dict, or a string in older runs)."""
    data = result.data
    m = data.get("machine")
    m = m if isinstance(m, dict) else {"cpu": m} if m else {}
    cores = m.get("cores") or m.get("cpu_cores")
    load_avg = m.get("load_avg_at_start") or data.get("load_avg_at_start")
    where = [str(x) for x in (m.get("gpu"), m.get("platform"), m.get("cpu")) if x]
    if cores:
        where.append(f"{cores} cores")
    if load_avg:
        where.append(f"load {load_avg[0]} at start")
    versions = {**{k: m[k] for k in VERSION_KEYS if k in m}, **(m.get("versions") or {})}
    using = [f"Python {m['python']}"] if "python" in m else []
    using += [f"{name} {version}" for name, version in versions.items()]
    date = m.get("date") or data.get("date") or "date not recorded"
    line = (f"Run {date} on {', '.join(where) or 'a machine not recorded'}; "
            f"{', '.join(using) or 'versions not recorded'}.")
    if result.smoke:
        line += " Smoke run: tiny shapes, the code paths rather than the figures."
    return f"_{line} From `{shown(result.path)}`._"


def plot(result: Result, plt: Any, folder: Path, page: Path) -> str | None:
    """The benchmark's figure as folder/KIND/STEM.png; its path relative to the page, or None without one."""
    draw = PLOTS.get(result.name)
    if plt is None or draw is None:
        return None
    try:
        fig = draw(plt, result.data)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as exc:
        plt.close("all")
        print(f"no plot for {result.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    fig.suptitle(f"{result.kind}: {result.name}{' (smoke)' if result.smoke else ''}", fontsize=9)
    target = folder / result.kind / f"{result.path.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_figure(plt, fig, target)
    return target.relative_to(page.parent).as_posix()


def tables(result: Result) -> Lines:
    render = TABLES.get(result.name)
    if render is not None:
        try:
            return render(result.data)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as exc:
            print(f"{result.path}: not the shape bench/{result.name}.py writes ({type(exc).__name__}: {exc}); "
                  "showing its numbers", file=sys.stderr)
            return ["Not the shape this report knows for this benchmark: its numbers, flattened.", "",
                    *generic(result.data)]
    return generic(result.data)


def section(result: Result, plt: Any, folder: Path, page: Path) -> Lines:
    title = TITLES.get(result.name, "no report layout for this file: its numbers, flattened")
    lines = [f"### {result.name}{' (smoke)' if result.smoke else ''}", "", f"{title}.", "", run_line(result), "",
             *tables(result)]
    image = plot(result, plt, folder, page)
    if image:
        lines += [f"![{result.name}]({image})", ""]
    return lines


def page_header(results: Path, kinds: dict[str, list[Result]], page: Path) -> Lines:
    readme = Path(os.path.relpath(REFERENCE / "README.md", page.resolve().parent)).as_posix()
    return ["# Benchmarks", "",
            f"Generated by `python -m bench report --results {shown(results)}` (bench/report.py): do not edit by "
            "hand, rerun it. Each benchmark measures the service against a baseline run in the same process and "
            "the same run (ratios are ours / baseline unless a column says otherwise), so both see the same "
            "machine and load. How the runs are made and where they go: "
            f"[bench/reference/README.md]({readme}); what each benchmark does: the "
            "docstring of bench/NAME.py (`python -m bench --help`).", "",
            "Kinds of machine: " + ", ".join(f"{kind} ({len(found)} results)" for kind, found in kinds.items())
            + ".", ""]


def write_page(results: Path, page: Path) -> int:
    """Writes the page and its plots; the number of benchmark sections."""
    kinds = collect(results)
    if not kinds:
        return 0
    plt = pyplot()
    folder = page.parent / page.stem
    lines = page_header(results, kinds, page)
    for kind, found in kinds.items():
        lines += [f"## {kind}", ""]
        for result in found:
            lines += section(result, plt, folder, page)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    count = sum(len(found) for found in kinds.values())
    print(f"wrote {page}: {count} results, {len(kinds)} kind(s) of machine, {fmt(len(lines))} lines")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REFERENCE,
                        help="folder of NAME.json files or of KIND/ folders of them (default bench/reference/)")
    parser.add_argument("--out", type=Path, default=PAGE, help="the Markdown page (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"no such folder: {args.results}", file=sys.stderr)
        return 2
    if not write_page(args.results, args.out):
        print(f"no JSON result files in {args.results} (nor in its folders): nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
