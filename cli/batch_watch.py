"""`llm-interface batch watch ID`: a live progress bar of a batch's request_counts, read from the API.

Polls `GET /v1/batches/{id}` once a second (stdlib only, so it runs from any install; with the first of
`LLM_API_KEYS` when keys are set) and redraws one line; ends when the batch does, with exit code 0 for
`completed` and 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BAR_WIDTH = 40


def render(batch: dict[str, Any]) -> str:
    counts = batch.get("request_counts") or {}
    total, completed, failed = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
    done = completed + failed
    filled = BAR_WIDTH * done // total if total else 0
    percent = 100.0 * done / total if total else 0.0
    return (f"{batch['id']} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} {percent:5.1f}% "
            f"completed {completed} failed {failed} {batch['status']}")


def fetch(base_url: str, batch_id: str, api_key: str | None = None) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/v1/batches/{urllib.parse.quote(batch_id, safe='')}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        batch: dict[str, Any] = json.load(response)
        return batch


def summary(batch: dict[str, Any]) -> str:
    parts = [f"status {batch['status']}"]
    for name in ("output_file_id", "error_file_id"):
        if batch.get(name):
            parts.append(f"{name} {batch[name]}")
    for error in ((batch.get("errors") or {}).get("data") or [])[:10]:
        parts.append(f"line {error.get('line')}: {error.get('code')}: {error.get('message')}")
    return "\n".join(parts)


def watch(base_url: str, batch_id: str, api_key: str | None = None, out: TextIO = sys.stdout,
          interval_s: float = 1.0) -> int:
    tty = out.isatty()
    last = ""
    while True:
        try:
            batch = fetch(base_url, batch_id, api_key)
        except urllib.error.HTTPError as exc:
            print(f"\n{exc.code}: {exc.read().decode(errors='replace')}", file=out)
            return 2
        except (urllib.error.URLError, OSError) as exc:
            print(f"\nthe API at {base_url} is unreachable ({exc}); retrying", file=out)
            time.sleep(interval_s)
            continue
        line = render(batch)
        if line != last:
            out.write(f"\r{line}" if tty else f"{line}\n")
            out.flush()
            last = line
        if batch["status"] in FINAL:
            print("\n" + summary(batch) if tty else summary(batch), file=out)
            return 0 if batch["status"] == "completed" else 1
        time.sleep(interval_s)
