"""Ray's OptunaSearch, extended to store each trial's record (imported lazily: it pulls in Ray)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from prunetune.evaluators import LatencyTable, Sensitivity
from prunetune.spaces import get_space

from ._repair import feasible_round_to, repair, smallest_fraction
from ._structured import StructuredAllocation


class DefineByRun:
    """The define-by-run space: the allocation (one ratio per group, or the structured
    space's coordinates) and a cost target (a fraction of the budget); the ratios are then
    scaled together onto the target.

    A picklable object (Ray checkpoints its searcher), holding only the space config.
    """

    def __init__(self, space_name: str, space_config: Mapping[str, Any],
                 limits: Mapping[str, float], size: int, min_target: float | None = None,
                 table_json: str | None = None, round_to_choices: tuple[int, ...] = (),
                 front_every: int = 0, allocation: str = "per-group",
                 prior_metric: str = "flops", sensitivity_json: str | None = None) -> None:
        """``round_to_choices`` keeps only the roundings whose smallest network meets
        ``limits`` (:func:`feasible_round_to`); ``min_target`` (the lowest cost target, a
        fraction of the budget) defaults to the smallest network of those.

        ``allocation`` is what a trial samples: ``"per-group"`` keep-ratios or
        ``"structured"`` coordinates (:class:`search._structured.StructuredAllocation`, whose
        cost-aware family costs by ``prior_metric`` and which moves towards the sensitivity
        allocation of ``sensitivity_json`` when given).

        Raises:
            BudgetError: no rounding of ``round_to_choices`` meets the budget.
        """
        self.space_name, self.space_config = space_name, dict(space_config)
        self.allocation, self.prior_metric = allocation, prior_metric
        self.sensitivity_json = sensitivity_json
        self._generators: dict[int, StructuredAllocation] = {}
        self.front_every = front_every
        self.limits, self.size = dict(limits), size
        self.table_json = table_json
        self._spaces: dict[int, Any] = {}
        self._table: LatencyTable | None = None
        space = self._space(self.space_config["round_to"])
        table = self._load_table()
        self.round_to_choices = feasible_round_to(space, tuple(round_to_choices), self.limits,
                                                  size, table)
        self.min_target = min_target if min_target is not None else min(
            smallest_fraction(self._space(r), self.limits, size, table)
            for r in self.round_to_choices or (space.round_to,))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spaces": {}, "_table": None, "_generators": {}}

    def _space(self, round_to: int) -> Any:
        if round_to not in self._spaces:
            self._spaces[round_to] = get_space(self.space_name,
                                               **{**self.space_config, "round_to": round_to})
        return self._spaces[round_to]

    def _load_table(self) -> LatencyTable | None:
        if self._table is None and self.table_json:
            self._table = LatencyTable.from_json(self.table_json)
        return self._table

    def structured(self, round_to: int) -> StructuredAllocation:
        """The structured space's generator for the space rounded to ``round_to``."""
        if round_to not in self._generators:
            sens = Sensitivity.from_json(self.sensitivity_json) if self.sensitivity_json else None
            self._generators[round_to] = StructuredAllocation(
                self._space(round_to), self.limits, self.size, self.prior_metric,
                self._load_table(), sens)
        return self._generators[round_to]

    def __call__(self, trial: Any) -> dict:
        self._load_table()
        round_to = self.space_config["round_to"]
        if self.round_to_choices:  # channel rounding as a searched choice
            round_to = trial.suggest_categorical("round_to", list(self.round_to_choices))
        space = self._space(round_to)
        raw = (self.structured(round_to).suggest(trial) if self.allocation == "structured"
               else space.suggest(trial))
        # Most trials land at the budget, where the user's pick is made; every
        # ``front_every``-th sampled trial explores the cost axis for the Pareto front.
        target = 1.0
        if self.explores(trial):
            target = trial.suggest_float("cost_target", self.min_target, 1.0)
        baseline = trial.user_attrs.get("baseline", "")
        # Uniform width stays one width multiplier (not filled), as a user would apply it.
        policy, factor = repair(space, raw, self.limits, self.size, target, self._table,
                                fill=baseline != "uniform")
        return {"policy": policy, "channels": space.channels(policy), "round_to": round_to,
                "repair_factor": factor, "cost_target": target,
                "baseline": baseline}

    def explores(self, trial: Any) -> bool:
        """Whether this trial samples its cost target instead of landing at the budget:
        every ``front_every``-th trial, never an enqueued one (baseline or prior)."""
        if self.front_every <= 0 or trial.user_attrs.get("baseline"):
            return False
        return trial.number % self.front_every == self.front_every - 1


class PrunetuneSearch(OptunaSearch):
    """Stores each trial's record as Optuna user attributes and closes failed candidates
    (e.g. diverged) as FAIL with their reason, instead of leaving them RUNNING."""

    def optuna_number(self, trial_id: str) -> int | None:
        """The Optuna trial number of Ray's trial ``trial_id`` (None if this searcher did not
        propose it)."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.number

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and trial_id not in self._completed_trials:
            for k, v in json.loads(result.get("attrs_json") or "{}").items():
                ot_trial.set_user_attr(k, v)
            if result.get("failure"):
                ot_trial.set_user_attr("failure", result["failure"])
                # ray's OptunaSearch types _ot_study as None (it is set after __init__)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)  # type: ignore[attr-defined]
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)
