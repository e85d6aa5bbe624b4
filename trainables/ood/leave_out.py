"""The leave-out ensemble (Vyas et al., ECCV 2018): classifiers that each learned what "unseen" looks like.

The K in-distribution classes are split into N disjoint groups (`class_groups`: a seeded partition,
every class in exactly one group). Member i is the project's `Classifier` over the K - |group i|
other classes, trained with cross-entropy on those plus the entropy margin loss of the paper on the
images of group i, which it never learns to classify:

    loss_i = CE(in) + beta * max(0, m + mean H(p_i(x_in)) - mean H(p_i(x_out)))

so the held-out classes' predictive entropy is pushed above the in-distribution one by at least the
margin m (H in nats; `margin_loss`). The held-out group plays the OOD data the paper's members learn
from: self-supervised, no outside images.

At test time (`LeaveOutDetector`) each member scores an ODIN-perturbed input
x_i = x - epsilon * sign(grad_x -log max_c p_i(c | x; T)) by max_c p_i(c | x_i; T) - H(p_i(x_i; T))
(temperature-scaled softmax), and the ensemble's OOD score is the sum over members, as in the
paper's test procedure. The class prediction is the argmax of the members' softmax outputs summed
over the classes each member knows: every class is known to N - 1 members.

T and epsilon come from a small grid (`temperatures` x `epsilons`), picked after every epoch on
validation data only: the held-out validation images (in) against `validation_ood` (Gaussian noise
by default; never a test set). The reference picks them the same way on an auxiliary set (T = 100,
epsilon = 0.002 on iSUN). Tune searches the training settings (margin, its weight, N, epochs) on
`val_leave_out_auroc`: each member's AUROC at separating the validation images of its own classes
from those of its held-out group, a near-OOD check that needs no outside data.

All N members train in one trial, on the same batches (one optimizer over all of them: Adam is
per-parameter, so that equals one optimizer per member), in the project's `fit` loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.classifier import Classifier, split_train_val
from trainables.data import ImageSet, every_class_training_data, load_images
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fit import fit
from trainables.ood.detectors import Detector, check_batch_size, check_images, odin_direction, scoring_mode
from trainables.ood.metrics import ood_metrics
from trainables.ood.sets import check_validation_ood, ood_set
from trainables.reporter import Reporter
from trainables.settings import DatasetSettings, RuntimeSettings

NAME = "leave_out"
ALL_CLASSES = 10  # it trains on every class of its dataset, and each has ten (trainables/data.py)
VALIDATION_SEED = 1  # the validation OOD images, as in odin_search; evaluation jobs draw test images with seed 0
_SEED_STRIDE = 100_003  # per config.seed, as elsewhere


@dataclass(frozen=True, kw_only=True)
class LeaveOutConfig(DatasetSettings, RuntimeSettings):  # all ten classes of `dataset` are in-distribution
    val_size: int = 1000  # carved from the training split, seeded
    groups: int = 5  # N: members, each leaving out one group of classes (the paper: 5 groups of CIFAR-10)
    margin: float = 0.4  # m, in nats: how far the held-out entropy must exceed the in-distribution one
    margin_weight: float = 0.1  # beta, the margin term's weight against the cross-entropy
    nf: int = 1  # each member is Classifier(nf, K - |group|)
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 3
    temperatures: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)  # the validation grid for T ...
    epsilons: tuple[float, ...] = (0.0, 0.001, 0.002)  # ... and for epsilon
    validation_ood: str = "gaussian_noise"  # a trainables.ood.sets name, used ONLY to pick T and epsilon
    validation_images: int = 500  # per side of the T / epsilon choice

    def __post_init__(self) -> None:
        if min(self.nf, self.batch_size, self.epochs, self.val_size, self.validation_images) < 1:
            raise ValueError("nf, batch_size, epochs, val_size and validation_images must be >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        if self.groups < 2:
            raise ValueError(f"groups must be >= 2 (one group is every class: nothing left out), got {self.groups}")
        if self.margin < 0 or self.margin_weight < 0:
            raise ValueError(f"margin and margin_weight must be >= 0, got {self.margin} and {self.margin_weight}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.temperatures or not self.epsilons:
            raise ValueError("temperatures and epsilons need at least one value each")
        if min(self.temperatures) <= 0 or min(self.epsilons) < 0:
            raise ValueError(f"temperatures must be > 0 and epsilons >= 0, got {self.temperatures} and "
                             f"{self.epsilons}")
        check_validation_ood(self.validation_ood)


def class_groups(num_classes: int, groups: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """A seeded partition of classes 0..K-1 into `groups` disjoint groups of near-equal size (sizes
    differ by at most one), each sorted. Every member must keep at least two classes to classify."""
    if not 2 <= groups <= num_classes:
        raise ValueError(f"groups must be in [2, {num_classes}] for {num_classes} classes, got {groups}")
    order = np.random.default_rng(seed).permutation(num_classes)
    parts = tuple(tuple(sorted(int(c) for c in part)) for part in np.array_split(order, groups))
    if num_classes - max(len(part) for part in parts) < 2:
        raise ValueError(f"{groups} groups of {num_classes} classes leave a member fewer than two classes")
    return parts


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N,) entropy in nats of softmax(logits) per row; exact for saturated rows (no log of 0)."""
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def margin_loss(logits_in: torch.Tensor, logits_out: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, margin + mean H(in) - mean H(out)): zero once the held-out images' mean entropy exceeds the
    in-distribution images' by the margin. Zero when either side of the batch is empty."""
    if len(logits_in) == 0 or len(logits_out) == 0:
        return logits_in.new_zeros(())
    return torch.clamp(margin + entropy(logits_in).mean() - entropy(logits_out).mean(), min=0.0)


def leave_out_loss(logits_in: torch.Tensor, labels_in: torch.Tensor, logits_out: torch.Tensor, margin: float,
                   weight: float) -> torch.Tensor:
    """The paper's training loss of one member: cross-entropy on its own classes + weight * margin_loss."""
    return F.cross_entropy(logits_in, labels_in) + weight * margin_loss(logits_in, logits_out, margin)


class LeaveOutEnsemble(nn.Module):
    """N `Classifier`s; member i knows the classes outside `groups[i]`, in increasing order.

    `forward(x)` is the ensemble's class distribution (N images, K classes): each member's softmax
    placed on the classes it knows, summed and divided by N (each class is known to N - 1 members).
    """

    def __init__(self, groups: tuple[tuple[int, ...], ...], num_classes: int, nf: int = 1) -> None:
        super().__init__()
        self.groups, self.num_classes, self.nf = tuple(tuple(g) for g in groups), num_classes, nf
        held_out = sorted(c for group in self.groups for c in group)
        if held_out != list(range(num_classes)):
            raise ValueError(f"groups {self.groups} are not a partition of classes 0..{num_classes - 1}")
        kept = [[c for c in range(num_classes) if c not in group] for group in self.groups]
        self.members = nn.ModuleList(Classifier(nf, len(k)) for k in kept)
        # local[i, c]: member i's output index of class c, or -1 where c is in its held-out group.
        local = torch.full((len(kept), num_classes), -1, dtype=torch.long)
        for i, k in enumerate(kept):
            local[i, k] = torch.arange(len(k))
        self.register_buffer("local", local, persistent=False)
        self.kept = [torch.tensor(k) for k in kept]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(len(x), self.num_classes)
        for member, kept in zip(self.members, self.kept):
            total[:, kept.to(x.device)] += F.softmax(member(x), dim=1)
        return total / len(self.members)


def train_leave_out_epoch(ensemble: LeaveOutEnsemble, optimizer: torch.optim.Optimizer, train_set: ImageSet,
                          config: LeaveOutConfig, order_seed: int, device: torch.device) -> dict[str, float]:
    """One pass over the training images, every member on the same batch; the mean summed loss per batch."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(order_seed))
    total, batches = 0.0, 0
    for idx in order.split(config.batch_size):
        x, y = train_set.images[idx].to(device), train_set.labels[idx].to(device)
        loss = x.new_zeros(())
        for i, member in enumerate(ensemble.members):
            local = ensemble.local[i][y]
            inside = local >= 0
            logits = member(x)
            if inside.any():
                loss = loss + leave_out_loss(logits[inside], local[inside], logits[~inside], config.margin,
                                             config.margin_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
    return {"train_loss": total / max(batches, 1)}


def _member_score(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """max_c p_c - H(p) of p = softmax(logits / T), in float64 (float32 rounds confident maxima to 1.0)."""
    scaled = logits.double() / temperature
    return F.softmax(scaled, dim=1).max(dim=1).values - entropy(scaled)


@torch.no_grad()
def member_scores(ensemble: LeaveOutEnsemble, images: torch.Tensor, temperatures: tuple[float, ...],
                  epsilons: tuple[float, ...], device: torch.device, batch_size: int = 500) -> np.ndarray:
    """(len(temperatures), len(epsilons), N members, len(images)) float64 member scores on perturbed inputs.

    The perturbation direction depends on T but not on epsilon, so it is computed once per (T, member,
    batch) and reused for every epsilon. The ensemble is scored in eval mode with frozen parameters.
    """
    check_images(images)
    out = np.empty((len(temperatures), len(epsilons), len(ensemble.members), len(images)))
    with scoring_mode(ensemble, freeze=True):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            stop = start + len(x)
            for m, member in enumerate(ensemble.members):
                for t, temperature in enumerate(temperatures):
                    direction = odin_direction(member, x, temperature) if max(epsilons) > 0 else None
                    for e, epsilon in enumerate(epsilons):
                        perturbed = x if epsilon == 0 else x - epsilon * direction
                        out[t, e, m, start:stop] = _member_score(member(perturbed), temperature).cpu().numpy()
    return out


class LeaveOutDetector(Detector):
    """Score = sum over members of max_c p_i - H(p_i) at (T, epsilon); prediction = the ensemble's argmax."""

    name = NAME

    def __init__(self, ensemble: LeaveOutEnsemble, temperature: float, epsilon: float, device: str = "auto",
                 batch_size: int = 500) -> None:
        if not temperature > 0 or not epsilon >= 0:
            raise ValueError(f"temperature must be > 0 and epsilon >= 0, got {temperature} and {epsilon}")
        check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.ensemble = ensemble.to(self.device)
        self.temperature, self.epsilon, self.batch_size = float(temperature), float(epsilon), batch_size

    def score(self, images: torch.Tensor) -> np.ndarray:
        scores = member_scores(self.ensemble, images, (self.temperature,), (self.epsilon,), self.device,
                               self.batch_size)
        return scores[0, 0].sum(axis=0)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        """The class index (0..K-1, as `ImageSet.labels`) with the highest summed member probability."""
        check_images(images)
        with scoring_mode(self.ensemble, freeze=False):
            parts = [self.ensemble(b.to(self.device)).argmax(1).cpu() for b in images.split(self.batch_size)]
        return torch.cat(parts).numpy() if parts else np.empty(0, dtype=np.int64)


def choose_temperature_epsilon(scores_in: np.ndarray, scores_out: np.ndarray, temperatures: tuple[float, ...],
                               epsilons: tuple[float, ...]) -> tuple[float, float, dict[str, float]]:
    """The grid point with the best ensemble AUROC of `member_scores` arrays (in vs out), and its metrics.

    Ties (a saturated validation set gives several 1.0s) go to the first point in grid order, i.e. the
    lowest temperature and then the smallest epsilon: the least change to the members' own outputs.
    """
    best: tuple[float, float, dict[str, float]] | None = None
    for t, temperature in enumerate(temperatures):
        for e, epsilon in enumerate(epsilons):
            values = ood_metrics(scores_in[t, e].sum(axis=0), scores_out[t, e].sum(axis=0))
            if best is None or values["auroc"] > best[2]["auroc"]:
                best = (temperature, epsilon, values)
    assert best is not None
    return best


def leave_out_auroc(member_scores_in: np.ndarray, labels: np.ndarray, ensemble: LeaveOutEnsemble) -> float:
    """Mean over members of the AUROC of member i's (N, n) scores: its own classes' images against its
    held-out group's. Members whose held-out group has no image here are skipped."""
    values = []
    for i, group in enumerate(ensemble.groups):
        out = np.isin(labels, group)
        if out.any() and (~out).any():
            values.append(ood_metrics(member_scores_in[i][~out], member_scores_in[i][out])["auroc"])
    if not values:
        raise ValueError("no member has both own-class and held-out validation images: raise val_size")
    return float(np.mean(values))


def build_model(state: Checkpoint) -> LeaveOutEnsemble:
    """Rebuild the trained ensemble from a checkpoint, sized by its config (the groups are in its seed and size;
    it trains on all ten classes of its dataset)."""
    config = state.config
    ensemble = LeaveOutEnsemble(class_groups(ALL_CLASSES, config["groups"], config["seed"]), ALL_CLASSES, config["nf"])
    ensemble.load_state_dict(state.modules["ensemble"])
    return ensemble.eval()


def detector_from_state(state: Checkpoint, device: str = "auto") -> LeaveOutDetector:
    """The trained ensemble with the T and epsilon its checkpoint's epoch picked on validation data."""
    if state.trainable != NAME:
        raise ValueError(f"a {state.trainable!r} checkpoint is not a {NAME} one")
    return LeaveOutDetector(build_model(state), state.metrics["temperature"], state.metrics["epsilon"],
                            device=device)


def describe(state: Checkpoint) -> str:
    """The settings of a trained ensemble, for evaluate_ood's table."""
    config, metrics = state.config, state.metrics
    return (f"N={config['groups']}, margin={config['margin']:.3g}, beta={config['margin_weight']:.3g}, "
            f"epochs={state.epoch}, T={metrics['temperature']:.4g}, epsilon={metrics['epsilon']:.4g}")


def train(config: LeaveOutConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: every epoch reports train_loss, val_accuracy, val_leave_out_auroc, and the T and
    epsilon picked on the validation sets with the val_auroc, val_fpr_at_95_tpr they give."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = load_images(config.dataset, "train", allow_fallback=config.allow_fallback, seed=config.seed)
    train_set, val_set = split_train_val(data, config)
    num_classes = len(data.classes)
    ensemble = LeaveOutEnsemble(class_groups(num_classes, config.groups, config.seed), num_classes,
                                config.nf).to(device)
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=config.lr)
    validation_in = val_set.images[:config.validation_images]
    validation_ood = ood_set(config.validation_ood, count=config.validation_images, seed=VALIDATION_SEED)
    grid = (config.temperatures, config.epsilons)

    def train_epoch(epoch: int) -> dict[str, float]:
        return train_leave_out_epoch(ensemble, optimizer, train_set, config,
                                     order_seed=config.seed * _SEED_STRIDE + epoch, device=device)

    def validate(epoch: int) -> dict[str, float]:
        plain = member_scores(ensemble, val_set.images, (1.0,), (0.0,), device)[0, 0]
        detector = LeaveOutDetector(ensemble, 1.0, 0.0, device=str(device))
        accuracy = float((detector.predict(val_set.images) == val_set.labels.numpy()).mean())
        temperature, epsilon, chosen = choose_temperature_epsilon(member_scores(ensemble, validation_in, *grid, device),
                                                                  member_scores(ensemble, validation_ood, *grid, device),
                                                                  *grid)
        return {"val_accuracy": accuracy,
                "val_leave_out_auroc": leave_out_auroc(plain, val_set.labels.numpy(), ensemble),
                "val_auroc": chosen["auroc"], "val_fpr_at_95_tpr": chosen["fpr_at_95_tpr"],
                "temperature": temperature, "epsilon": epsilon}

    return fit(trainable=NAME, config=config, epochs=config.epochs, modules={"ensemble": ensemble},
               optimizers={"ensemble": optimizer}, train_epoch=train_epoch, evaluate=validate, reporter=reporter)


LEAVE_OUT = TrainableDef(
    name=NAME,
    config_cls=LeaveOutConfig,
    run=train,
    metrics=(
        Metric("val_leave_out_auroc", higher_is_better=True,
               description="mean over members of the AUROC (T = 1, epsilon = 0) of its own classes' validation "
                           "images against its held-out group's: near-OOD, without outside data"),
        Metric("val_accuracy", higher_is_better=True,
               description="the ensemble's accuracy on the held-out validation images"),
        Metric("val_auroc", higher_is_better=True,
               description="the ensemble's AUROC at the chosen T and epsilon: validation images vs the "
                           "validation_ood set (not a test set)"),
        Metric("val_fpr_at_95_tpr", higher_is_better=False, description="FPR at 95% TPR at the chosen T and epsilon"),
        Metric("train_loss", higher_is_better=False,
               description="mean over batches of the members' summed losses (CE + beta * margin term)"),
        Metric("temperature", higher_is_better=True, description="the T picked on validation data; informational"),
        Metric("epsilon", higher_is_better=True, description="the epsilon picked on validation data; informational"),
    ),
    description="leave-out ensemble (Vyas et al. 2018): N classifiers each trained with an entropy margin on a "
                "held-out group of classes, ODIN-style scores summed (OOD detection)",
    curves=("val_leave_out_auroc", "val_accuracy", "train_loss"),
    build_model=build_model,
    datasets=every_class_training_data,
    tiny_config={"train_size": 300, "val_size": 100, "groups": 2, "epochs": 1, "validation_images": 50},
)
