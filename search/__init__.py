"""Which candidate to try next and which ones win: budgets, the Ray Tune + Optuna study, the front."""

from ._budget import (FORMS, METRICS, Budget, BudgetError, check_feasible, format_metric,
                      parse_budget, within)
from ._final import export, final_candidates, finalize, run_finals, versus_uniform
from ._priors import (DEFAULT_ALPHAS, DEFAULT_PRIORS, cost_aware, depth_ramp, marginal_costs,
                      parse_priors)
from ._pareto import dominates, hypervolume_2d, pareto_indices
from ._ray import init_ray
from ._refine import RefineSettings, refine_order, run_refine
from ._results import (at_budget, emit, front, front_table, plot_front, trial_records,
                       write_front)
from ._repair import candidate_values, repair, uniform_at_budget
from ._study import (OBJECTIVES, SAMPLERS, Problem, StudySettings, close_orphans, completed,
                     open_storage, run_study, run_trial, start_points)

__all__ = ["RefineSettings", "at_budget", "refine_order", "run_refine", "DEFAULT_ALPHAS", "DEFAULT_PRIORS", "cost_aware", "depth_ramp", "marginal_costs", "parse_priors", "FORMS", "METRICS", "OBJECTIVES", "SAMPLERS", "Budget", "BudgetError", "Problem",
           "StudySettings", "candidate_values", "check_feasible", "close_orphans", "completed", "dominates", "emit",
           "export", "final_candidates", "finalize", "run_finals", "versus_uniform", "format_metric", "front", "front_table", "hypervolume_2d",
           "init_ray", "open_storage", "pareto_indices", "parse_budget", "plot_front", "repair",
           "run_study", "run_trial", "start_points", "trial_records", "uniform_at_budget", "within",
           "write_front"]
