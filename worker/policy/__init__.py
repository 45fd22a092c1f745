"""Model scheduling, pure: placement planner, explicit model states, and the switching policy.

Nothing here imports torch or redis or needs an event loop; the worker drives it (see DESIGN.md).
"""

from worker.policy.interface import Effects, ModelStatus, PolicyConfig, Refusal, RefusalCode
from worker.policy.planner import Placement, PlannerParams, gpu_budget_bytes, plan_placements
from worker.policy.policy import Policy
from worker.policy.states import ALLOWED, InvalidTransition, ModelState, StateTable

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
