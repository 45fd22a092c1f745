"""The micro-batching queue: one owner of the waiting sequences, batched by a token budget.

Jobs are admitted already tokenised. `next_round` takes every waiting sequence of the model whose
job has waited longest, sorts them by length and cuts them into batches whose padded size (longest x
count) stays within the token budget and within `MAX_PADDING` times their real tokens. Everything
present when a round starts is served in that round, so no sequence waits behind more than one round.
A sequence longer than the budget on its own still gets a batch of one: nothing is ever dropped or left
to hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.protocol import Job

# Padded tokens allowed per real token in a batch: past it a batch is cut, since on a CPU a padded token
# costs as much as a real one (length-sorted batches still pad a lot where lengths jump).
MAX_PADDING = 1.2


@dataclass(eq=False)
class Pending:
    """One admitted job: its sequences, and their results as they come back."""

    job: Job
    entry_id: str
    seqs: list[list[int]]
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    batch: bool = False  # from the batch lane: served only in rounds with no interactive job waiting

    def __post_init__(self) -> None:
        self.results = [None] * len(self.seqs)
        self.remaining = len(self.seqs)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)

    def fill(self, index: int, value: Any) -> bool:
        """Store one result; True when the job is complete."""
        self.results[index] = value
        self.remaining -= 1
        return self.remaining == 0


@dataclass(frozen=True)
class Item:
    pending: Pending
    index: int

    @property
    def seq(self) -> list[int]:
        return self.pending.seqs[self.index]


def plan_batches(lengths: list[int], budget_tokens: int, max_items: int,
                 max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices grouped into batches, by ascending length: a batch is cut before its padded size (longest x
    count) would pass the budget, or `max_padding` times its real tokens (boundaries between length groups)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        width = max(lengths[i], 1)
        padded = width * (len(current) + 1)
        if current and (padded > budget_tokens or len(current) >= max_items or padded > max_padding * (real + width)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += width
    if current:
        batches.append(current)
    return batches


class BatchQueue:
    def __init__(self, budget_tokens: int, max_items: int) -> None:
        self.budget_tokens = budget_tokens
        self.max_items = max_items
        # Sequences of batch-lane work per round (the handler sizes it to a fraction of a second of
        # engine time): an interactive job arriving meanwhile waits for at most one such round.
        self.batch_round_items = max_items
        self._waiting: list[Pending] = []
        self._served: dict[int, int] = {}  # id(pending) -> sequences already handed out (batch-lane jobs)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, pending: Pending) -> None:
        self._waiting.append(pending)

    def drop(self, gone: Callable[[Pending], bool]) -> list[Pending]:
        """Remove (and return) waiting jobs for which `gone` is true: cancelled or expired."""
        dropped = [p for p in self._waiting if gone(p)]
        self._waiting = [p for p in self._waiting if not gone(p)]
        for pending in dropped:
            self._served.pop(id(pending), None)
        return dropped

    def waiting(self) -> list[Pending]:
        return list(self._waiting)

    def next_round(self) -> tuple[str, list[list[Item]]] | None:
        """(model, batches) for the model whose oldest job has waited longest; None when idle.
        Interactive jobs first: batch-lane jobs make a round only when no interactive job waits, and then
        only `batch_round_items` of their sequences (a job may span rounds)."""
        if not self._waiting:
            return None
        pool = [p for p in self._waiting if not p.batch] or self._waiting
        model = min(pool, key=lambda p: p.job.created_ms).job.model
        taken = sorted((p for p in pool if p.job.model == model), key=lambda p: p.job.created_ms)
        items = self._slice(taken, self.batch_round_items if taken[0].batch else None)
        plan = plan_batches([len(it.seq) for it in items], self.budget_tokens, self.max_items)
        return model, [[items[i] for i in batch] for batch in plan]

    def _slice(self, pendings: list[Pending], max_seqs: int | None) -> list[Item]:
        """The next sequences of these jobs (all of them, or up to `max_seqs`); finished jobs leave the queue."""
        items: list[Item] = []
        done: set[int] = set()
        for pending in pendings:
            start = self._served.get(id(pending), 0)
            end = len(pending.seqs) if max_seqs is None else min(len(pending.seqs), start + max_seqs - len(items))
            items += [Item(pending, i) for i in range(start, end)]
            if end == len(pending.seqs):
                done.add(id(pending))
                self._served.pop(id(pending), None)
            else:
                self._served[id(pending)] = end
            if max_seqs is not None and len(items) >= max_seqs:
                break
        self._waiting = [p for p in self._waiting if id(p) not in done]
        return items
