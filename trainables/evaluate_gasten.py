"""Job: the flagship study's evaluation, three questions about the models this study trained.

1. Are the features any good beyond 7 vs 1? Few-shot accuracy curves on all 10 MNIST classes of the
   classifier's penultimate layer and of the GAN discriminator's features, beside raw pixels
   (`trainables.evaluate_fewshot`).
2. Is prototype selection worth it? A head trained on the selected prototypes against one trained on
   as many randomly drawn ambiguous images and on as many real images (`trainables.prototype_curve`).
3. Does the classifier know what it does not know? The OOD table on Fashion-MNIST, KMNIST and noise:
   max-softmax and ODIN on the study's classifier, and a K+1 classifier whose "unknown" class was
   trained on GASTeN's boundary images (`trainables.ood.evaluate`).

Each part is the project's own evaluator, run unchanged into a subfolder (`fewshot/`,
`prototype_curve/`, `ood/`), so this study's numbers are computed exactly like the other studies';
this job only wires the study's models into them and prefixes their metrics with the part's name.
A part whose input is not given is left out and said so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainables.data import DatasetUse
from trainables.definitions import JobDef, Metric, Output, under
from trainables.evaluate_fewshot import FEWSHOT, FewShotJobConfig
from trainables.evaluate_fewshot import run as run_fewshot
from trainables.fewshot import DEFAULT_SHOTS
from trainables.ood.evaluate import EVALUATE_OOD, EvaluateOodConfig
from trainables.ood.evaluate import run as run_ood
from trainables.ood.sets import ood_datasets
from trainables.prototype_curve import PROTOTYPE_CURVE, PrototypeCurveConfig
from trainables.prototype_curve import run as run_prototype_curve
from trainables.reporter import ListReporter, Reporter
from trainables.settings import RuntimeSettings

PARTS = ("fewshot", "prototype_curve", "ood")
HEADLINE = ("fewshot.classifier.lin.k16", "fewshot.discriminator.lin.k16", "fewshot.pixels.lin.k16")


@dataclass(frozen=True, kw_only=True)
class GastenEvaluationConfig(RuntimeSettings):
    classifier: str  # `classifier.best`: the study's binary classifier C
    discriminator: str = ""  # `gan.best`: the DCGAN whose discriminator gives features; "" leaves them out
    prototypes: str = ""  # `prototypes.best`: the prototypes job's folder; "" leaves the prototype curve out
    clustering: str = ""  # `prototypes.clustering`: the clustering the prototypes were picked from
    kplus1: str = ""  # `boundary_ood.best`: K+1 trained on GASTeN's boundary images; "" leaves it out
    # few-shot (all 10 MNIST classes, the test split)
    shots: tuple[int, ...] = DEFAULT_SHOTS
    fewshot_repeats: int = 5
    heads: tuple[str, ...] = ("lin", "nonlin")
    train_pool: int = 10000
    test_images: int = 0  # 0 = the whole test split
    # prototype curve
    curve_repeats: int = 5
    # OOD
    ood_sets: tuple[str, ...] = ("fashion_mnist", "kmnist", "uniform_noise")
    ood_images: int = 2000

    def __post_init__(self) -> None:
        if not self.classifier:
            raise ValueError("classifier is empty: give the study's classifier (inputs: {classifier: classifier.best})")
        if self.prototypes and not self.clustering:
            raise ValueError("clustering is empty: give the clustering the prototypes were picked from by reference "
                             "(inputs: {clustering: prototypes.clustering})")

    def fewshot(self) -> FewShotJobConfig:
        return FewShotJobConfig(dataset="mnist", classifier=self.classifier, discriminator=self.discriminator,
                                pixels=True, shots=self.shots, repeats=self.fewshot_repeats, heads=self.heads,
                                train_pool=self.train_pool, test_images=self.test_images, seed=self.seed,
                                device=self.device)

    def prototype_curve(self) -> PrototypeCurveConfig:
        return PrototypeCurveConfig(prototypes=self.prototypes, classifier=self.classifier, clustering=self.clustering,
                                    repeats=self.curve_repeats, test_images=self.test_images, seed=self.seed,
                                    device=self.device)

    def ood(self) -> EvaluateOodConfig:
        return EvaluateOodConfig(classifier=self.classifier, kplus1=self.kplus1, kplus1_name="kplus1_boundary",
                                 test_sets=self.ood_sets, images=self.ood_images, device=self.device)


def _run_part(name: str, run, config, workdir: Path) -> dict[str, float]:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    collected = ListReporter()
    metrics = run(config, collected, folder) or (collected.results[-1] if collected.results else {})
    return {f"{name}.{key}": float(value) for key, value in metrics.items()}


def headline_first(metrics: Mapping[str, float]) -> dict[str, float]:
    """The few numbers a summary shows first: each feature set at k = 16, the prototype curve's headline
    (its first metric) and the boundary K+1 beside max-softmax on Fashion-MNIST."""
    first = [key for key in HEADLINE if key in metrics]
    first += [key for key in metrics if key.startswith("prototype_curve.")][:2]
    first += [key for key in ("ood.kplus1_boundary.fashion_mnist.auroc", "ood.max_softmax.fashion_mnist.auroc")
              if key in metrics]
    return {**{key: metrics[key] for key in first}, **metrics}


def run(config: GastenEvaluationConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    workdir = Path(workdir)
    metrics: dict[str, float] = {}
    print("[evaluation] 1/3 few-shot curves on all 10 MNIST classes: classifier"
          + (", discriminator" if config.discriminator else "") + " and pixel features", flush=True)
    metrics.update(_run_part("fewshot", run_fewshot, config.fewshot(), workdir))
    if config.prototypes:
        print("[evaluation] 2/3 prototype curve: prototypes vs random ambiguous vs real images", flush=True)
        metrics.update(_run_part("prototype_curve", run_prototype_curve, config.prototype_curve(), workdir))
    else:
        print("[evaluation] 2/3 prototype curve left out: no prototypes input", flush=True)
    print("[evaluation] 3/3 OOD table" + (" with the boundary K+1" if config.kplus1 else ""), flush=True)
    metrics.update(_run_part("ood", run_ood, config.ood(), workdir))
    metrics = headline_first(metrics)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    reporter.report(metrics)
    return metrics


EVALUATE_GASTEN = JobDef(
    name="evaluate_gasten",
    config_cls=GastenEvaluationConfig,
    run=run,
    metrics=(Metric("fewshot.classifier.lin.k16", higher_is_better=True,
                    description="the study classifier's features, 10 MNIST classes, lin head, k = 16"),),
    description="the GASTeN study's evaluation: few-shot curves of the classifier's and discriminator's features "
                "vs pixels, the prototype curve (prototypes vs random vs real), the OOD table with a boundary K+1",
    datasets=lambda config: (DatasetUse("mnist", ("train", "test"), setting=""),  # the few-shot curves
                             *ood_datasets(config.ood_sets, "ood_sets")),
    tiny_config={"shots": [16], "fewshot_repeats": 1, "heads": ["lin"], "train_pool": 300, "test_images": 200,
                 "curve_repeats": 1, "ood_sets": ["uniform_noise"], "ood_images": 100},
    # The flagship study's wiring, every part on: one 7-vs-1 classifier upstream of the clustering and the K+1.
    contract_inputs=lambda upstream: {"classifier": upstream.trainable("classifier"),
                                      "discriminator": upstream.trainable("dcgan"),
                                      "prototypes": upstream.job("prototypes"),
                                      "clustering": upstream.objective("clustering"),
                                      "kplus1": upstream.trainable("kplus1", classes=[7, 1])},
    # each part's own outputs, in its subfolder
    outputs={"metrics": Output("metrics", "metrics.json"), **under("fewshot", FEWSHOT.outputs),
             **under("ood", EVALUATE_OOD.outputs), **under("prototype_curve", PROTOTYPE_CURVE.outputs)},
)
