"""Threshold-free scores for out-of-distribution (OOD) detection, computed with scikit-learn.

One convention everywhere in `trainables.ood`: a detector's score is HIGHER for inputs it
believes are in-distribution, and in-distribution is the positive class. A detector is then a
binary classifier "in vs out" thresholded on its score, and the usual OOD numbers (Hendrycks &
Gimpel 2017; Liang et al. 2018) are properties of its ROC / precision-recall curves:

- `auroc`: probability that a random in-distribution input outscores a random OOD one (ties
  count half). 0.5 is chance, 1 perfect, 0 perfectly reversed.
- `aupr_in` / `aupr_out`: average precision with in-distribution (resp. OOD, scores negated) as
  the positive class. Unlike AUROC they depend on the ratio of in to out inputs, so both are kept.
- `fpr_at_95_tpr`: share of OOD inputs accepted when the threshold accepts 95% of in-distribution
  inputs; the number a deployment cares about. Lower is better.
- `detection_error`: min over thresholds of 0.5 (1 - TPR) + 0.5 FPR, the best error rate when in
  and out are equally likely. Lower is better; 0.5 is chance.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRIC_KEYS: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "detection_error")
HIGHER_IS_BETTER: dict[str, bool] = {
    "auroc": True, "aupr_in": True, "aupr_out": True, "fpr_at_95_tpr": False, "detection_error": False,
}
_TARGET_TPR = 0.95


def _checked(scores: object, name: str) -> np.ndarray:
    """A 1-D float64 copy; a 2-D array is refused rather than flattened, since (N, C) logits or
    probabilities passed by mistake would otherwise give a plausible-looking wrong number."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: OOD metrics need at least one score on each side")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {bad} non-finite score(s) (NaN or inf)")
    return array


def ood_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR at 95% TPR and detection error of "higher = in-distribution" scores.

    FPR at 95% TPR: over the points of sklearn's `roc_curve` (every distinct score is a threshold,
    `drop_intermediate=False` so no point is skipped), take the first one, i.e. the highest
    threshold, whose TPR is >= 0.95, and report its FPR. FPR never decreases as the threshold
    falls, so this is the lowest FPR reachable while accepting at least 95% of in-distribution
    inputs. No interpolation between points: with few or tied scores the achieved TPR can be
    above 0.95 (e.g. 1.0 with 4 in-distribution inputs), and the FPR is the one at that TPR.
    """
    scores_in = _checked(scores_in, "scores_in")
    scores_out = _checked(scores_out, "scores_out")
    scores = np.concatenate([scores_in, scores_out])
    is_in = np.concatenate([np.ones(len(scores_in), dtype=np.int64), np.zeros(len(scores_out), dtype=np.int64)])

    fpr, tpr, _ = roc_curve(is_in, scores, drop_intermediate=False)
    first = int(np.argmax(tpr >= _TARGET_TPR))  # tpr ends at 1.0, so some point qualifies
    return {
        "auroc": float(roc_auc_score(is_in, scores)),
        "aupr_in": float(average_precision_score(is_in, scores)),
        "aupr_out": float(average_precision_score(1 - is_in, -scores)),
        "fpr_at_95_tpr": float(fpr[first]),
        "detection_error": float(np.min(0.5 * (1.0 - tpr) + 0.5 * fpr)),
    }


class OodMetric:
    """torchmetrics-style accumulator: `update(scores, is_in=...)` batch by batch, then `compute()`.

    Rank metrics need every score, so batches are kept (as float64 arrays) rather than summarised;
    at a few thousand images per set that is a few tens of kilobytes.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._in: list[np.ndarray] = []
        self._out: list[np.ndarray] = []

    def update(self, scores: object, is_in: bool) -> None:
        if hasattr(scores, "detach"):  # a torch tensor, possibly on the GPU or requiring grad
            scores = scores.detach().cpu().double().numpy()
        array = np.asarray(scores, dtype=np.float64)
        if array.ndim != 1:
            raise ValueError(f"scores must be a 1-D batch of scores, got shape {array.shape}")
        (self._in if is_in else self._out).append(array.copy())

    def compute(self) -> dict[str, float]:
        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0)

        return ood_metrics(joined(self._in), joined(self._out))
