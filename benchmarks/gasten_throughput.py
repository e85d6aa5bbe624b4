"""Does gensearch's GASTeN training epoch run as fast as a hand-written loop with the same models?

GASTeN's step 2 (`trainables/gasten.py`) trains through `trainables.dcgan.train_gan_epoch` with the
confusion term passed in as `extra_loss`: generic code with per-batch bookkeeping (three `.item()`
calls per batch for the epoch's mean losses, latents drawn on the CPU from the checkpointed global
generator, the confusion term through two small helper functions). This script measures what that
costs against the loop a researcher would write by hand: for each batch of a random permutation,
one discriminator step and one generator step with loss
`non-saturating GAN loss + alpha * mean |0.5 - softmax(C(G(z)))[:, 1]|`, nothing else.

Both arms use the same freshly built models (same seed: Generator(z_dim=64, ngf), Discriminator(ndf),
a frozen randomly initialised binary Classifier in eval mode), the same Adam settings, the same real
MNIST 7-vs-1 training images (scikit-learn digits when MNIST is missing), batch size and device.
Random weights are fine: throughput does not depend on training quality. After one warm-up epoch
each, the arms alternate (ours, reference, ours, reference, ...) for `--repeats` rounds so machine
noise hits both alike; the result is median images/s per arm and their ratio (goal >= 0.95).
It is a measurement, not a test: it exits 0 whether the goal is met or not.

    .venv/bin/python benchmarks/gasten_throughput.py
    .venv/bin/python benchmarks/gasten_throughput.py --threads 1 --repeats 5
    .venv/bin/python benchmarks/gasten_throughput.py --device cuda --images 16384 --batch-size 256
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables.classifier import Classifier
from trainables.data import load_images
from trainables.dcgan import Discriminator, Generator, discriminator_loss, generator_loss, train_gan_epoch
from trainables.device import resolve_device
from trainables.gasten import positive_probability
from trainables.metrics.acd import confusion_distance

GOAL = 0.95
Z_DIM = 64
MODEL_SEED = 0
LR, BETAS = 2e-4, (0.5, 0.999)  # GastenConfig's defaults


@dataclass
class Arm:
    """One arm's models and optimizers; both arms build theirs from the same seed."""

    generator: Generator
    discriminator: Discriminator
    classifier: Classifier
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer


def build_arm(args: argparse.Namespace, device: torch.device) -> Arm:
    torch.manual_seed(MODEL_SEED)
    generator = Generator(Z_DIM, args.ngf).to(device)
    discriminator = Discriminator(args.ndf).to(device)
    classifier = Classifier(nf=1, num_classes=2).to(device).eval()
    classifier.requires_grad_(False)
    return Arm(generator, discriminator, classifier,
               torch.optim.Adam(generator.parameters(), lr=LR, betas=BETAS),
               torch.optim.Adam(discriminator.parameters(), lr=LR, betas=BETAS))


def ours_epoch(arm: Arm, images: torch.Tensor, args: argparse.Namespace, device: torch.device, epoch: int) -> None:
    """Exactly what trainables/gasten.py's train() runs per epoch."""

    def confusion(fake: torch.Tensor) -> torch.Tensor:
        return confusion_distance(positive_probability(arm.classifier, fake))

    train_gan_epoch(generator=arm.generator, discriminator=arm.discriminator, g_optimizer=arm.g_optimizer,
                    d_optimizer=arm.d_optimizer, images=images, batch_size=args.batch_size,
                    order_seed=epoch, device=device, extra_loss=confusion, extra_weight=args.alpha)


def reference_epoch(arm: Arm, images: torch.Tensor, args: argparse.Namespace, device: torch.device,
                    epoch: int) -> None:
    """The straight loop: no `.item()`, no bookkeeping, latents drawn on the device."""
    generator, discriminator, classifier = arm.generator, arm.discriminator, arm.classifier
    order = torch.randperm(len(images))
    for start in range(0, len(order), args.batch_size):
        real = images[order[start:start + args.batch_size]].to(device)
        z = torch.randn(len(real), Z_DIM, device=device)
        fake = generator(z)

        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        arm.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        arm.d_optimizer.step()

        confusion = (0.5 - torch.softmax(classifier(fake), dim=1)[:, 1]).abs().mean()
        g_loss = generator_loss(discriminator(fake)) + args.alpha * confusion
        arm.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        arm.g_optimizer.step()


EpochFn = Callable[[Arm, torch.Tensor, argparse.Namespace, torch.device, int], None]


def timed_epoch(run: EpochFn, arm: Arm, images: torch.Tensor, args: argparse.Namespace, device: torch.device,
                epoch: int) -> float:
    """Seconds for one epoch, with the device drained before each clock reading."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run(arm, images, args, device, epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where both arms train; auto = CUDA when visible, else CPU (default: auto)")
    parser.add_argument("--images", type=int, default=4096,
                        help="real MNIST 7-vs-1 training images per epoch (default: 4096)")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64 (GastenConfig's)")
    parser.add_argument("--ngf", type=int, default=32, help="generator width (default: 32)")
    parser.add_argument("--ndf", type=int, default=32, help="discriminator width (default: 32)")
    parser.add_argument("--alpha", type=float, default=25.0, help="weight of the confusion term (default: 25)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, each one epoch of ours then one of the reference (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both arms (default: leave PyTorch's choice)")
    args = parser.parse_args()
    for name in ("images", "batch_size", "ngf", "ndf", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.alpha < 0:
        parser.error(f"--alpha must be >= 0, got {args.alpha}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_images("mnist", "train", classes=(7, 1), limit=args.images, seed=0, allow_fallback=True)
    images = data.images  # on the CPU, moved batch by batch, as gasten's train() does
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{datetime.date.today()}  torch {torch.__version__}  device {device} ({where})")
    print(f"{len(images)} images ({data.source}), batch {args.batch_size}, ngf {args.ngf}, ndf {args.ndf}, "
          f"alpha {args.alpha:g}, {args.repeats} rounds after one warm-up epoch per arm\n")

    arms: dict[str, tuple[EpochFn, Arm]] = {"ours": (ours_epoch, build_arm(args, device)),
                                             "reference": (reference_epoch, build_arm(args, device))}
    for run, arm in arms.values():
        timed_epoch(run, arm, images, args, device, epoch=0)  # warm-up: allocator, kernels, caches

    rates: dict[str, list[float]] = {name: [] for name in arms}
    print(f"{'round':<7}{'ours s':>9}{'ours img/s':>12}{'ref s':>9}{'ref img/s':>12}{'ratio':>8}")
    for round_ in range(1, args.repeats + 1):
        seconds = {name: timed_epoch(run, arm, images, args, device, epoch=round_)
                   for name, (run, arm) in arms.items()}
        for name, elapsed in seconds.items():
            rates[name].append(len(images) / elapsed)
        print(f"{round_:<7}{seconds['ours']:>9.2f}{rates['ours'][-1]:>12.0f}"
              f"{seconds['reference']:>9.2f}{rates['reference'][-1]:>12.0f}"
              f"{rates['ours'][-1] / rates['reference'][-1]:>8.3f}", flush=True)

    ours, reference = statistics.median(rates["ours"]), statistics.median(rates["reference"])
    ratio = ours / reference
    print(f"{'median':<7}{'':>9}{ours:>12.0f}{'':>9}{reference:>12.0f}{ratio:>8.3f}")
    print(f"\nratio ours/reference = {ratio:.3f} (goal >= {GOAL:.2f}): {'met' if ratio >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
