"""The data fingerprint and the plan a training uses (below training/ and study/, above data/ and networks/)."""

from medtransfer.planning.fingerprint import PlanError, fingerprint
from medtransfer.planning.plan import PLANNED_KEYS, PlannedDefaults, load_plan, make_plan, plan_digest, static_value

__all__ = ["PLANNED_KEYS", "PlanError", "PlannedDefaults", "fingerprint", "load_plan", "make_plan", "plan_digest", "static_value"]
