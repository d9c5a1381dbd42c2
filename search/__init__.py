"""Which candidate to try next and which ones win: budgets, the Ray Tune + Optuna study, the front.

Calling this package is the Python API: ``prunetune.search(model, budget, train=..., val=...)``
is :func:`prunetune._api.search` (see :class:`_CallablePackage`).
"""

import sys as _sys
import types as _types
from typing import Any as _Any

from ._budget import (FORMS, Budget, BudgetError, check_feasible, format_metric,
                      parse_budget, parse_budgets)
from ._final import export, final_candidates, finalize, run_finals, versus_uniform
from ._priors import (DEFAULT_ALPHAS, DEFAULT_PRIORS, cost_aware, depth_ramp, marginal_costs,
                      parse_priors, sensitivity_allocation)
from ._structured import StructuredAllocation, depth_buckets
from ._pareto import dominates, hypervolume_2d, pareto_indices
from ._ray import init_ray
from ._refine import RefineSettings, refine_order, run_refine
from ._results import (at_budget, emit, front, front_table, plot_front, trial_records,
                       write_front)
from ._repair import candidate_values, feasible_round_to, repair, uniform_at_budget
from ._objectives import OBJECTIVES, Objective, record_key
from ._study import (ALLOCATIONS, SAMPLERS, Problem, StudyInUse, StudySettings, check_study_owner,
                     close_orphans, completed, enqueue_start_points, open_storage, open_study,
                     run_study, run_trial,
                     start_points)

__all__ = ["ALLOCATIONS", "sensitivity_allocation", "StructuredAllocation", "depth_buckets",
           "DEFAULT_ALPHAS", "DEFAULT_PRIORS", "FORMS", "OBJECTIVES", "SAMPLERS",
           "at_budget", "Budget", "BudgetError", "candidate_values", "check_feasible",
           "check_study_owner", "close_orphans", "completed", "cost_aware", "depth_ramp",
           "enqueue_start_points",
           "dominates", "emit", "export", "feasible_round_to", "final_candidates", "finalize",
           "format_metric", "front", "front_table", "hypervolume_2d", "init_ray",
           "marginal_costs", "Objective", "open_storage", "open_study",
           "pareto_indices", "parse_budget", "parse_budgets", "parse_priors", "plot_front", "Problem", "record_key",
           "refine_order", "RefineSettings", "repair", "run_finals", "run_refine", "run_study",
           "run_trial", "start_points", "StudyInUse", "StudySettings", "trial_records",
           "uniform_at_budget",
           "versus_uniform", "write_front"]


class _CallablePackage(_types.ModuleType):
    """``prunetune.search`` is this subpackage (``from prunetune.search import parse_budget``)
    and, called, the Python API (``prunetune.search(model, "50%-FLOPs", train=..., val=...)``,
    :func:`prunetune._api.search`). The API is imported when called: it sits above the
    pipeline, which imports this package."""

    def __call__(self, model: _Any, budget: _Any, **kwargs: _Any) -> _Any:
        """``prunetune._api.search(model, budget, train=..., val=..., **options)``."""
        from prunetune._api import search

        return search(model, budget, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
