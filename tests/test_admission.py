"""Which chat jobs the worker renders on its event loop (short plain prompts) and which on a thread (long
prompts, tools, response schemas: rendering or compiling them could hold the loop for milliseconds)."""

from __future__ import annotations

from typing import Any

from worker.handlers.chat import INLINE_TEXT, cheap_to_render


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
