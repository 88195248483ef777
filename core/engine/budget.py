"""A whole run's time budget, shared among its networks as the run goes.

Each network has its own time budget (TrainConfig.time_budget_s, per model in a preset's recipe). A
run budget bounds the wall time of the whole run: before each network starts, its budget becomes
the smaller of its own and its share of the time left, shared among the networks still to train in
proportion to their own budgets, once every one of them has been charged its fixed costs (building,
predictions, latency, saving, decoding a new input size). A network that overruns (epochs are whole,
at least two) is paid for by the ones after it, so the run ends near its budget whatever the load.
"""
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
        """Seconds of training for the next network. own_s: its own budget (None: no limit of its
        own); remaining: the own budgets of every network still to train, itself included. Networks
        without one weigh as the mean of those with one (all equally where none has)."""
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
    """Epochs to run once the first one is timed: `epochs`, or the whole number nearest the time budget
    (at least 2, so the schedule gets past its warm-up; nearest rather than as many as fit, see
    docs/NOTES.md, "Run budget"). A pure function of the first epoch, so a resumed run plans exactly
    as the killed one did."""
    if time_budget_s is None:
        return epochs
    return int(min(epochs, max(2, math.floor(time_budget_s / max(first_epoch_s, 1e-9) + 0.5))))
