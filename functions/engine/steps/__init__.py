"""The steps of each operation, by job type: `STEPS[op](ctx, env) -> Step`, and `begin` (run once when a new
job starts). Each step module imports only functions.engine.context and functions.engine.vmops of the engine."""

from __future__ import annotations

from collections.abc import Callable

from functions.engine.context import Ctx, Env, Step
from functions.engine.steps import create, recreate, remove, scale
from functions.engine.steps.begin import begin

STEPS: dict[str, Callable[[Ctx, Env], Step]] = {
    "CREATE": create.create_step,
    "SCALEUP": scale.scaleup_step,
    "SCALEDOWN": scale.scaledown_step,
    "REMOVE": remove.remove_step,
    "RECREATE": recreate.recreate_step,
}

__all__ = ["STEPS", "begin"]
