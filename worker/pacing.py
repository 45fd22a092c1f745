"""How big a micro-batch should be: about `BATCH_S` of engine time at the speed measured, so that any job waits
behind at most one such batch; longer where a batch's fixed cost is large, so that it stays a small share.

On a GPU a batch's fixed cost (launches, the thread hop, pooling) is a millisecond or two and `BATCH_S` rules.
On a small CPU it was 15-20 ms per batch in the stack: at 0.05 s batches a 2,048-text request of long texts ran
in batches of one text and took 96 s, 70 s with 0.1 s batches; one-text requests with 32 in flight took 39 s
instead of 31. So the target is the larger of `BATCH_S` and `FIXED_SHARE_INVERSE` times the fixed cost, never
past `MAX_BATCH_S`. The fixed cost is the intercept of a least-squares line through the recent batches'
(padded tokens, seconds), refreshed only while their sizes are spread enough to tell it apart from the rest.
Pure: the handler feeds it each batch's measure and reads the padded-token budget back.
"""

from __future__ import annotations

from collections import deque

BATCH_S = 0.05  # engine time of one micro-batch where its fixed cost is small
MAX_BATCH_S = 0.2
FIXED_SHARE_INVERSE = 5  # a batch takes at least 5x its fixed cost: the fixed cost at most a fifth of it
SAMPLES = 64  # recent batches per model the fixed cost is fitted to
MIN_SPREAD = 2.0  # the largest of them at least twice the smallest, or the fit says nothing


def fixed_cost_s(samples: list[tuple[int, float]]) -> float | None:
    """The intercept of seconds over padded tokens (least squares, never below 0); None when the sizes are too
    alike (or too few) to tell a batch's fixed cost from its per-token cost."""
    if len(samples) < 8:
        return None
    sizes = [t for t, _ in samples]
    if min(sizes) <= 0 or max(sizes) < MIN_SPREAD * min(sizes):
        return None
    mean_t = sum(sizes) / len(sizes)
    mean_s = sum(s for _, s in samples) / len(samples)
    var = sum((t - mean_t) ** 2 for t in sizes)
    slope = sum((t - mean_t) * (s - mean_s) for t, s in samples) / var
    if slope <= 0:
        return None
    return max(0.0, mean_s - slope * mean_t)


def target_s(fixed_s: float | None) -> float:
    """The engine time a batch should take, given its fixed cost."""
    if fixed_s is None:
        return BATCH_S
    return min(MAX_BATCH_S, max(BATCH_S, FIXED_SHARE_INVERSE * fixed_s))


class Pacer:
    """Per model: the speed of recent full batches and their fixed cost, turned into a padded-token budget."""

    def __init__(self) -> None:
        self._rate: dict[str, float] = {}  # padded tokens per second of recent full batches
        self._samples: dict[str, deque[tuple[int, float]]] = {}
        self._fixed: dict[str, float] = {}  # the fixed cost last fitted

    def target_s(self, model: str) -> float:
        return target_s(self._fixed.get(model))

    def longest_target_s(self) -> float:
        """The longest batch target of any model (a gauge)."""
        return max((self.target_s(m) for m in self._samples), default=BATCH_S)

    def record(self, model: str, padded_tokens: int, seconds: float, current: int) -> int | None:
        """One batch's measure; the model's new padded-token budget, or None to keep `current`. Only a batch
        that used most of `current` says how fast the engine is: a small one (nothing else was waiting) is
        mostly fixed cost, and counting it would shrink the batches until throughput collapsed."""
        if seconds <= 0 or padded_tokens <= 0:
            return None
        samples = self._samples.setdefault(model, deque(maxlen=SAMPLES))
        samples.append((padded_tokens, seconds))
        fixed = fixed_cost_s(list(samples))
        if fixed is not None:
            self._fixed[model] = fixed
        if padded_tokens < current // 2:
            return None
        rate = padded_tokens / seconds
        self._rate[model] = rate if model not in self._rate else 0.7 * self._rate[model] + 0.3 * rate
        return max(1, int(self._rate[model] * self.target_s(model)))
