"""A local-search sampler: perturb the best allocation at the budget so far.

The start points (uniform width, the cost-aware priors) are where good allocations are, and
independent keep-ratios drawn by TPE or at random from ~25 dimensions rarely come near them
(bench ``search_ablation``). This sampler proposes each keep-ratio of a new trial as the best
trial's ratio times ``exp(sigma * N(0, 1))``, on the space's grid; the repair then scales the
whole allocation back onto the budget, so the perturbation moves channels between groups.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState


class LocalSampler(optuna.samplers.BaseSampler):
    """(1 + 1)-style local search from the best trial at the budget.

    Args:
        seed: Seed of the perturbations.
        sigma: Standard deviation of each ratio's log-multiplier.
        explore: Parameters not perturbed (the cost target of a trial that explores the
            front): drawn at random.
    """

    def __init__(self, seed: int | None = None, sigma: float = 0.3,
                 explore: tuple[str, ...] = ("cost_target", "round_to")) -> None:
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self.sigma, self.explore = sigma, explore
        self._anchor: dict[int, dict[str, Any] | None] = {}

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def _best(self, study: optuna.Study) -> dict[str, Any] | None:
        """Params of the most accurate completed trial that landed at the budget (it sampled
        no cost target), or None before any."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "cost_target" not in t.params]
        return max(done, key=lambda t: t.values[0]).params if done else None

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial.number not in self._anchor:
            self._anchor[trial.number] = self._best(study)
        anchor = self._anchor[trial.number]
        d = param_distribution
        if (param_name in self.explore or anchor is None or param_name not in anchor
                or not isinstance(d, FloatDistribution)):
            return self._random.sample_independent(study, trial, param_name, d)
        v = float(anchor[param_name]) * math.exp(self.sigma * self._rng.standard_normal())
        if d.step is not None:  # onto the grid, then into [low, high]
            v = d.low + round((v - d.low) / d.step) * d.step
        return min(d.high, max(d.low, round(v, 10)))
