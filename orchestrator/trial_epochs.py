"""How many epochs a tune stage's trials are expected to train, with and without ASHA.

ASHA (Tune's `_Bracket`, s=0) puts rungs at grace_period * reduction_factor**k epochs below max_t and
continues, at each rung, the trials above its 1 - 1/reduction_factor percentile: in expectation
1/reduction_factor of those that reached it. The rest stop at that rung; the survivors of the last
rung train to the end (max_t, or the config's epochs when fewer). Expected counts may be fractional.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    reaching = tuple(trials / reduction_factor ** k for k in range(len(milestones)))
    finishing = trials / reduction_factor ** len(milestones)
    return TrialEpochs(trials, end, milestones, reaching, finishing)
