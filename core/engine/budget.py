"""A whole run's time budget: each network gets at most its share of the time left, so overruns are absorbed."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

FIXED_COST_GUESS_S = 8.0   # a network's costs outside its training epochs, until one has been measured


@dataclass
class RunBudget:
    seconds: float
    started: float                                  # time.perf_counter() when the budget began
    fixed_costs: list[float] = field(default_factory=list)   # measured, one per network trained

    def share(self, own_s: float | None, remaining: list[float | None], now: float | None = None) -> float:
        """Seconds for the next network, given its own budget (None: none) and those of all still to train."""
        now = time.perf_counter() if now is None else now
        known = [b for b in remaining if b]
        default = sum(known) / len(known) if known else 1.0
        weights = [b or default for b in remaining]
        fixed = sum(self.fixed_costs) / len(self.fixed_costs) if self.fixed_costs else FIXED_COST_GUESS_S
        left = self.seconds - (now - self.started) - fixed * len(remaining)
        fair = max(0.0, left) * (own_s or default) / sum(weights)
        return min(own_s, fair) if own_s else fair

    def record(self, wall_s: float, training_s: float) -> None:
        """One network done: what it cost beyond its training epochs."""
        self.fixed_costs.append(max(0.0, wall_s - training_s))


def planned_epochs(epochs: int, time_budget_s: float | None, first_epoch_s: float) -> int:
    """`epochs`, or the whole number nearest the budget, at least 2 (docs/NOTES.md, "Run budget")."""
    if time_budget_s is None:
        return epochs
    return int(min(epochs, max(2, math.floor(time_budget_s / max(first_epoch_s, 1e-9) + 0.5))))
