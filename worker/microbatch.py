"""The micro-batching queue: one owner of the waiting sequences, served one micro-batch at a time.

Jobs are admitted already tokenised. `next_batch` picks the model of the job that has waited longest, then
the job whose turn it is: round robin, the job served longest ago (or never) first, among equals the one with
the fewest sequences served (fair interleaving: a one-text request arriving behind a 2,048-text one is in the
very next batch, and a job part-served never starves behind new ones), looks at a window of the waiting sequences of
that model (that job's first), sorts them by length and cuts them into batches whose padded size
(longest x count; their real tokens where the model's engine packs them) stays within the token budget and
within `MAX_PADDING` times their real tokens; it returns the batch that holds the chosen job's shortest
waiting sequence. The budget is the configured one,
cut by the handler to about 0.05 s of engine time at the speed it measures (worker/pacing.py), so any job waits
behind at most one such batch, and cancelled jobs are dropped between batches. A sequence longer than the
budget on its own still gets a batch of one: nothing is ever dropped or left to hang.
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
    batch: bool = False  # from the batch lane: served only while no interactive job waits
    slow: bool = False  # LLM_DEBUG_SLOW_ON matched (tests): each of its batches takes SLOW_S longer
    todo: list[int] = field(default_factory=list)  # sequences not yet handed out, shortest first
    turn: int = 0  # the queue's tick when it was admitted or last served: round robin, the smallest next

    def __post_init__(self) -> None:
        self.results = [None] * len(self.seqs)
        self.remaining = len(self.seqs)
        self.todo = sorted(range(len(self.seqs)), key=lambda i: len(self.seqs[i]))

    @property
    def handed(self) -> int:
        """Sequences already handed out to batches."""
        return len(self.seqs) - len(self.todo)

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
                 max_padding: float = MAX_PADDING, packed: bool = False) -> list[list[int]]:
    """Indices grouped into batches, by ascending length: a batch is cut before its padded size (longest x
    count) would pass the budget, or `max_padding` times its real tokens (boundaries between length groups).
    Packed (padding-free engines): a batch's size is its real tokens, and any lengths mix."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        width = max(lengths[i], 1)
        padded = real + width if packed else width * (len(current) + 1)
        if current and (padded > budget_tokens or len(current) >= max_items or padded > max_padding * (real + width)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += width
    if current:
        batches.append(current)
    return batches


class MicroBatchQueue:
    WINDOW = 4  # sequences looked at per batch: this many batches' worth (at most max_items each)

    def __init__(self, budget_tokens: int, max_items: int) -> None:
        self.budget_tokens = budget_tokens
        self.max_items = max_items
        # Padded tokens per batch of each model at its measured speed (worker/pacing.py: about 0.05 s of engine
        # time; the handler sets it): what any job waits behind at most. A model not measured yet starts at a quarter of
        # the budget, so its first batches cannot hold others up for long either.
        self.paced_tokens: dict[str, int] = {}
        self.packed: set[str] = set()  # models whose engine runs padding-free batches (the handler says)
        self._waiting: list[Pending] = []
        self._tick = 0  # one per batch handed out

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, pending: Pending) -> None:
        pending.turn = self._tick
        self._waiting.append(pending)

    def drop(self, gone: Callable[[Pending], bool]) -> list[Pending]:
        """Remove (and return) waiting jobs for which `gone` is true: cancelled or expired."""
        dropped = [p for p in self._waiting if gone(p)]
        self._waiting = [p for p in self._waiting if not gone(p)]
        return dropped

    def waiting(self) -> list[Pending]:
        return list(self._waiting)

    def next_batch(self) -> tuple[str, list[Item]] | None:
        """(model, one batch of items), or None when idle (see the module doc). Interactive jobs first:
        batch-lane jobs are served only while no interactive job waits."""
        if not self._waiting:
            return None
        pool = [p for p in self._waiting if not p.batch] or self._waiting
        model = min(pool, key=lambda p: p.job.created_ms).job.model
        jobs = sorted((p for p in pool if p.job.model == model), key=lambda p: (p.turn, p.handed, p.job.created_ms))
        budget = max(1, min(self.budget_tokens, self.paced_tokens.get(model, self.budget_tokens // 4)))
        window: list[Item] = []
        for pending in jobs:  # the chosen job's sequences first
            room = self.WINDOW * self.max_items - len(window)
            window += [Item(pending, i) for i in pending.todo[:room]]
            if len(window) >= self.WINDOW * self.max_items:
                break
        plan = plan_batches([len(it.seq) for it in window], budget, self.max_items, packed=model in self.packed)
        chosen = [window[i] for i in next(b for b in plan if 0 in b)]
        self._hand_out(chosen)
        return model, chosen

    def _hand_out(self, items: list[Item]) -> None:
        """These sequences are in a batch now; jobs with nothing left to hand out leave the queue."""
        self._tick += 1
        taken: dict[int, set[int]] = {}
        for it in items:
            taken.setdefault(id(it.pending), set()).add(it.index)
        for pending in {id(it.pending): it.pending for it in items}.values():
            pending.todo = [i for i in pending.todo if i not in taken[id(pending)]]
            pending.turn = self._tick
        self._waiting = [p for p in self._waiting if p.todo]


def batch_size(items: list[Item], packed: bool) -> int:
    """Tokens a batch computes: its real tokens when packed, else longest x count."""
    lengths = [len(it.seq) for it in items]
    return sum(lengths) if packed else len(lengths) * max(lengths)
