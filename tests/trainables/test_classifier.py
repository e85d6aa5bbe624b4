"""The two classifier architectures: the GASTeN reference (`paper`) against hand counts, and rebuilding both."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.checkpoint import save_checkpoint
from trainables.classifier import CLASSIFIER, Classifier, ClassifierConfig, PaperClassifier, make_classifier
from trainables.config import ConfigError, build_config
from trainables.fit import checkpoint_state
from trainables.gasten import load_frozen_classifier, positive_probability
from trainables.reporter import ListReporter


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("nf,expected", [(1, 129), (2, 293), (4, 729)])
def test_paper_classifier_has_the_reference_parameter_count(nf, expected):
    # conv 1->nf: 9nf + nf; conv nf->2nf: 18nf^2 + 2nf; linear 2nf*7*7 -> 1: 98nf + 1.
    assert 9 * nf + nf + 18 * nf * nf + 2 * nf + 98 * nf + 1 == expected
    assert parameters(PaperClassifier(nf, num_classes=2)) == expected
    # With more than two classes the output layer has one unit per class, as in the reference.
    assert parameters(PaperClassifier(nf, num_classes=10)) == expected - (98 * nf + 1) + 10 * (98 * nf + 1)


def test_paper_classifier_is_linear_convolutions_and_max_pooling_only():
    kinds = {type(m) for m in PaperClassifier(2).modules()} - {PaperClassifier, torch.nn.Sequential}
    assert kinds == {torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.Flatten, torch.nn.Linear}


def test_binary_paper_classifier_exposes_its_one_logit_as_two_so_softmax_is_its_sigmoid():
    torch.manual_seed(0)
    model = PaperClassifier(2).eval()
    images = torch.rand(6, 1, 28, 28)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        z = model.head(model.embed(images)).squeeze(1)  # the reference's single output, before its sigmoid
        logits = model(images)
    assert logits.shape == (6, 2) and torch.equal(logits[:, 0], torch.zeros(6))
    assert torch.allclose(positive_probability(model, images), torch.sigmoid(z), atol=1e-6)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(
        F.binary_cross_entropy(torch.sigmoid(z), labels.float()).item(), rel=1e-5)
    assert model.embed(images).shape == (6, 2 * 2 * 7 * 7)  # the flattened 7x7 maps the linear layer reads
    assert PaperClassifier(1, num_classes=10)(images).shape == (6, 10)


def test_arch_picks_the_model_and_an_unknown_arch_is_refused():
    assert isinstance(make_classifier("cnn", 1, 2), Classifier)
    assert isinstance(make_classifier("paper", 1, 2), PaperClassifier)
    assert ClassifierConfig().arch == "cnn"  # the default: other studies keep today's network
    with pytest.raises(ConfigError, match=r"arch: expected one of \['cnn', 'paper'\]"):
        build_config(ClassifierConfig, {"arch": "resnet"})


def test_a_checkpoint_records_its_arch_and_one_without_arch_rebuilds_the_cnn(tmp_path):
    paper = PaperClassifier(4)
    state = checkpoint_state("classifier", ClassifierConfig(arch="paper", nf=4), 1, {}, {"model": paper}, {})
    assert state.config["arch"] == "paper"
    rebuilt = CLASSIFIER.build_model(state)
    assert isinstance(rebuilt, PaperClassifier) and not rebuilt.training
    images = torch.rand(3, 1, 28, 28)
    assert torch.equal(rebuilt(images), paper.eval()(images))

    old = checkpoint_state("classifier", ClassifierConfig(nf=2), 1, {}, {"model": Classifier(2)}, {})
    del old.config["arch"]  # written before `arch` existed
    assert isinstance(CLASSIFIER.build_model(old), Classifier)

    frozen, _ = load_frozen_classifier(str(save_checkpoint(state, tmp_path / "paper")), torch.device("cpu"))
    assert isinstance(frozen, PaperClassifier) and not any(p.requires_grad for p in frozen.parameters())


def test_one_epoch_of_the_paper_classifier_separates_7_from_1():
    reporter = ListReporter()
    CLASSIFIER.run(ClassifierConfig(arch="paper", nf=1, train_size=1000, val_size=500, epochs=1, lr=3e-3,
                                    batch_size=32), reporter)
    # Seeded: 0.978 on this setting; a broken model or loss stays near chance (0.5).
    assert reporter.last("val_accuracy") > 0.9
    assert isinstance(CLASSIFIER.build_model(reporter.last_checkpoint), PaperClassifier)
