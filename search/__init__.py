"""Which candidate to try next and which ones win: budgets, the Ray Tune + Optuna study, the front."""

from ._budget import (FORMS, METRICS, Budget, BudgetError, check_feasible, format_metric,
                      parse_budget, within)

__all__ = ["FORMS", "METRICS", "Budget", "BudgetError", "check_feasible", "format_metric",
           "parse_budget", "within"]
