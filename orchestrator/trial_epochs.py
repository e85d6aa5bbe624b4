"""How many epochs a tune stage's trials are expected to train, with and without ASHA.

ASHA (Tune's `_Bracket`, s=0) puts rungs at grace_period * reduction_factor**k epochs below max_t. A trial
reaching a rung continues when its result is at least the 1 - 1/reduction_factor percentile of the results
recorded there *before* it: the first always continues, so more than 1/reduction_factor of the trials go on
(with reduction factor 2 and one rung, (n + 1) / 2 of n), and at later rungs the late arrivals, filtered
harder at the rungs before, go on more often still. No closed form covers that, so the expectation is taken
over simulated studies through Tune's own `_Bracket`: trials of random quality, in order, each keeping its
rank at every rung (learning curves rarely cross). The survivors of the last rung train to the end (max_t,
or the config's epochs when fewer). Expected counts are fractional.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ray.tune.schedulers.async_hyperband import _Bracket


@dataclass(frozen=True)
class TrialEpochs:
    """Expected epochs of one stage: `reaching[k]` trials reach `milestones[k]`, `finishing` train to `epochs`."""

    trials: int
    epochs: int
    milestones: tuple[int, ...] = ()
    reaching: tuple[float, ...] = ()
    finishing: float = 0.0

    @property
    def total(self) -> float:
        """Expected trial-epochs: each stopped trial counts the rung it stopped at."""
        stopped = sum((reach - after) * milestone for milestone, reach, after
                      in zip(self.milestones, self.reaching, self.reaching[1:] + (self.finishing,)))
        return stopped + self.finishing * self.epochs

    def trial_lengths(self) -> list[tuple[float, int]]:
        """(expected number of trials, epochs each trains), from the shortest."""
        lengths = [(reach - after, milestone) for milestone, reach, after
                   in zip(self.milestones, self.reaching, self.reaching[1:] + (self.finishing,))]
        return [entry for entry in lengths + [(self.finishing, self.epochs)] if entry[0] > 0]


def asha_milestones(grace_period: int, reduction_factor: float, max_t: int) -> tuple[int, ...]:
    """The epochs at which Tune's ASHA compares trials, from the first."""
    bracket = _Bracket(grace_period, max_t, reduction_factor, s=0)
    return tuple(sorted(int(milestone) for milestone, _ in bracket._rungs))


def expected_trial_epochs(trials: int, epochs: int, asha: tuple[int, float, int] | None = None) -> TrialEpochs:
    """Expected epochs of `trials` trials of `epochs` each; `asha`: (grace_period, reduction_factor, max_t)."""
    if asha is None:
        return TrialEpochs(trials, epochs, finishing=float(trials))
    grace_period, reduction_factor, max_t = asha
    end = min(epochs, max_t)
    milestones = tuple(m for m in asha_milestones(grace_period, reduction_factor, max_t) if m < end)
    reaching = simulated_reaching(trials, milestones, asha)
    return TrialEpochs(trials, end, milestones, reaching[:-1], reaching[-1])


SIMULATED_RESULTS = 15_000  # rung decisions simulated per estimate: about a second on one core


def simulated_reaching(trials: int, milestones: tuple[int, ...], asha: tuple[int, float, int],
                       seed: int = 0) -> tuple[float, ...]:
    """Mean number of trials that reach each of `milestones` and that pass the last one, over studies of
    `trials` trials of random quality run one after another through Tune's `_Bracket` (seeded: the same
    estimate every time)."""
    grace_period, reduction_factor, max_t = asha
    studies = max(50, SIMULATED_RESULTS // max(1, trials * len(milestones)))
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(milestones) + 1)
    for _ in range(studies):
        bracket = _Bracket(grace_period, max_t, reduction_factor, s=0)
        for number, quality in enumerate(rng.random(trials)):
            trial = SimpleNamespace(trial_id=str(number))
            reached = 0
            for milestone in milestones:
                counts[reached] += 1
                if bracket.on_result(trial, milestone, quality) == "STOP":
                    break
                reached += 1
            else:
                counts[reached] += 1
    return tuple(float(count) / studies for count in counts)
