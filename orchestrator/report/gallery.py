"""The pictures and tables the report shows, copied under `<output>/report/` beside report.md so the two
travel together; only the files gensearch copied are ever replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

REPORT_DIR = "report"
CAPTIONS = {
    "search_history.png": "each trial's best value in start order, with the running best: did the search converge?",
    "parameter_sweep.png": "the metric against each searched setting (best trial ringed): is the optimum inside "
                           "the range or at its edge?",
    "pareto.png": "the two rival metrics over every trial and epoch, with the Pareto front, the chosen point "
                  "circled and reference points as diamonds",
    "importance.png": "each searched setting's share of the metric's variance across trials (fANOVA): which "
                      "settings mattered, which could be fixed?",
    "samples.png": "samples from the best trial's chosen checkpoint",
    "denoise.png": "denoising steps from the best trial's chosen checkpoint",
    "confusion_matrix.png": "confusion matrix on the test split",
    "misclassified.png": "misclassified test images",
    "fewshot_curves.png": "few-shot accuracy against k (log axis), one line per feature set and head",
    "roc_curves.png": "ROC curves per OOD set and method",
    "scatter.png": "the clustered images, by cluster and by C(x)",
    "prototype_curve.png": "prototype curve",
}


class Gallery:
    """Copies the files the report shows under `<output>/report/` and returns relative links to them,
    so report.md and report/ travel together (copies, not links: a zip keeps copies). Only files listed in
    the folder's manifest (`study_folder.Manifest`) are ever replaced or removed: anything else a user
    keeps in report/ stays, and a copy whose name is taken by such a file gets another name."""

    def __init__(self, output: Path) -> None:
        from orchestrator.study_folder import Manifest

        self.output = output
        self.root = output / REPORT_DIR
        self.manifest = Manifest(output)
        self.copied: list[Path] = []

    def reset(self) -> None:
        """Remove the pictures the previous report copied: a re-run must not keep images of a stage that changed."""
        for path in self.manifest.under(self.root):
            self.manifest.remove(path)
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                             reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, source: Path, *parts: str) -> str:
        """Copy `source` to report/<parts...> and return its link relative to report.md."""
        destination = self.root.joinpath(*parts)
        number = 1
        while self.manifest.claim(destination) is None:  # a user's file has that name
            destination = destination.with_name(f"{Path(parts[-1]).stem}-{number}{Path(parts[-1]).suffix}")
            number += 1
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        self.copied.append(destination)
        return quote(destination.relative_to(self.output).as_posix())

    def image(self, source: Path, *parts: str, caption: str | None = None) -> list[str]:
        """Markdown for one image: the picture, then its file name and what it shows."""
        link = self.add(source, *parts)
        text = caption if caption is not None else CAPTIONS.get(source.name, "")
        return [f"![{source.stem}]({link})", f"*{source.name}*" + (f": {text}" if text else ""), ""]
