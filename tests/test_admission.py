"""Which admission work the worker does on its event loop (short chat prompts, short texts to embed or rerank) and
which on a thread (long inputs, tools, response schemas: they could hold the loop for milliseconds)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from worker.handlers.base import INLINE_TEXT, admission_work, small_text
from worker.handlers.chat import cheap_to_render


def job(content: Any = "Tell me a story.", **extra: Any) -> dict[str, Any]:
    return {"prompts": [{"messages": [{"role": "user", "content": content}]}], "params": {}, **extra}


def test_short_plain_prompts_render_on_the_loop_and_the_rest_on_a_thread() -> None:
    assert cheap_to_render(job())
    assert cheap_to_render(job([{"type": "text", "text": "x" * (INLINE_TEXT - 100)}]))
    assert not cheap_to_render(job("x" * (INLINE_TEXT + 1)))
    assert not cheap_to_render({"prompts": [{"messages": [{"role": "user", "content": "hi"}] * 400}], "params": {}})
    assert not cheap_to_render({"prompts": [{"prompt": list(range(INLINE_TEXT + 1))}], "params": {}})
    assert cheap_to_render({"prompts": [{"prompt": list(range(100))}], "params": {}})
    assert not cheap_to_render(job(chat={"tools": [{"type": "function", "function": {"name": "f"}}]}))
    assert not cheap_to_render(job(params={"json": {"schema": {"type": "object"}}}))


def test_short_texts_to_embed_or_rerank_are_small() -> None:
    assert small_text(["a query", "a sentence to embed"])
    assert small_text([[1, 2, 3]] * 10)  # token ids count one each
    assert not small_text(["x" * 1000, "y" * 1001])
    assert not small_text([list(range(INLINE_TEXT + 1))])
    assert not small_text(["query", ["a document"] * 300, None])


def test_small_work_runs_on_the_loop_and_the_rest_on_a_thread() -> None:
    async def threads() -> tuple[int, int]:
        return await admission_work(True, threading.get_ident), await admission_work(False, threading.get_ident)

    on_loop, on_thread = asyncio.run(threads())
    assert on_loop == threading.get_ident()
    assert on_thread != threading.get_ident()
