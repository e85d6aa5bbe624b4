"""matplotlib for files, never for a screen: the one place that picks the Agg backend.

Imported where a plot is drawn, not at module top, so validating a study file or starting a
trial does not pay matplotlib's import.
"""

from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend (trials and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
