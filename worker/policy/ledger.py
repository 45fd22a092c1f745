"""GPU memory and per-type slots, twice: as held now, and as held once planned switches are done.

A model counts from the moment its load starts until its unload finishes, at the placement it was
loaded with. "Now" decides whether a load may start at once; "after" lets the policy plan a switch
(pick victims) without promising the same room to two models.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

from common.protocol import ModelType
from worker.policy.planner import Placement


@dataclass
class Ledger:
    budget_bytes: int | None  # None: no GPU, only the slots limit
    cache_size: int
    used_now: int = 0
    used_after: int = 0
    count_now: Counter[ModelType] = field(default_factory=Counter)
    count_after: Counter[ModelType] = field(default_factory=Counter)

    def hold(self, placement: Placement, leaving: bool = False) -> None:
        """A model that holds memory now; ``leaving``: it is being unloaded."""
        self.used_now += placement.gpu_bytes
        self.count_now[placement.model_type] += 1
        if not leaving:
            self.used_after += placement.gpu_bytes
            self.count_after[placement.model_type] += 1

    def release(self, placement: Placement) -> None:
        """Plan a model's eviction: it will not hold memory after the switch."""
        self.used_after -= placement.gpu_bytes
        self.count_after[placement.model_type] -= 1

    def reserve(self, placement: Placement) -> None:
        """Plan a model's load: it will hold memory after the switch."""
        self.used_after += placement.gpu_bytes
        self.count_after[placement.model_type] += 1

    def start(self, placement: Placement) -> None:
        """A planned load starts now."""
        self.used_now += placement.gpu_bytes
        self.count_now[placement.model_type] += 1

    def fits_now(self, placement: Placement) -> bool:
        return self._fits(placement, self.used_now, self.count_now)

    def fits_after(self, placement: Placement) -> bool:
        return self._fits(placement, self.used_after, self.count_after)

    def fits_alone(self, placement: Placement) -> bool:
        return self.budget_bytes is None or placement.gpu_bytes <= self.budget_bytes

    def copy(self) -> Ledger:
        return copy.deepcopy(self)

    def _fits(self, placement: Placement, used: int, counts: Counter[ModelType]) -> bool:
        if counts[placement.model_type] >= self.cache_size:
            return False
        return self.budget_bytes is None or used + placement.gpu_bytes <= self.budget_bytes
