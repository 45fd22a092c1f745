"""Model scheduling, pure: placement planner, explicit model states, and the switching policy.

Nothing here imports torch or redis or needs an event loop; the worker drives it (see DESIGN.md).
"""

from worker.scheduler.interface import Effects, ModelStatus, PolicyConfig, Refusal, RefusalCode
from worker.scheduler.planner import Placement, PlannerParams, gpu_budget_bytes, plan_placements
from worker.scheduler.policy import Policy
from worker.scheduler.states import ALLOWED, InvalidTransition, ModelState, StateTable

__all__ = [
    "ALLOWED",
    "Effects",
    "InvalidTransition",
    "ModelState",
    "ModelStatus",
    "Placement",
    "PlannerParams",
    "Policy",
    "PolicyConfig",
    "Refusal",
    "RefusalCode",
    "StateTable",
    "gpu_budget_bytes",
    "plan_placements",
]
