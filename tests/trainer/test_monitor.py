"""The validation metrics the trainer reports every epoch (val_acc, val_loss, val_f1) and
``train.monitor``: the metric that picks the kept epoch and drives early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import f1_score

import trainer
import trainer.loop as loop
from trainer import TrainConfig
from trainer.evaluate import confusion_matrix, macro_f1

REAL_EVALUATE = loop.evaluate


def tiny(**overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8,
        "data.batch_size": 64,
        "model.backbone": "small_cnn",
        "model.width": 8,
        "optim.name": "adam",
        "optim.lr": 3e-3,
        "train.epochs": 3,
        "train.patience": 0,
    }
    return TrainConfig.from_flat({**flat, **overrides})


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_scikit_learn(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 6
    y = torch.randint(0, k - 1, (200,), generator=gen)  # class 5 is never true ...
    pred = torch.where(torch.rand(200, generator=gen) < 0.6, y, torch.randint(0, k, (200,)))
    pred[pred == 4] = 3  # ... and class 4 never predicted
    cm = confusion_matrix(y, pred, k)
    expected = f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)
    assert macro_f1(cm) == pytest.approx(expected)


def test_macro_f1_leaves_out_classes_neither_present_nor_predicted():
    y = torch.tensor([0, 0, 0, 1])
    cm = confusion_matrix(y, y, 5)  # perfect on the two classes there are
    assert macro_f1(cm) == 1.0
    # one small class always missed: accuracy 0.75, macro-F1 far lower
    missed = confusion_matrix(y, torch.tensor([0, 0, 0, 0]), 5)
    assert macro_f1(missed) == pytest.approx((2 * 3 / 7 + 0.0) / 2)
    assert math.isnan(macro_f1(torch.zeros(3, 3, dtype=torch.long)))


def test_every_epoch_reports_val_f1_of_the_validation_predictions():
    result = trainer.train(tiny(**{"train.epochs": 2}))
    data = trainer.load_data(tiny().data)
    for h in result.history:
        assert 0.0 <= h["val_f1"] <= 1.0
    kept = confusion_matrix(data.y_val, result.val_predictions, data.num_classes)
    assert result.best_metric("val_f1") == pytest.approx(macro_f1(kept))
    assert result.best_metric("val_acc") == result.best_val_acc


def _scripted_validation(monkeypatch, losses: list[float], accs: list[float]) -> None:
    """Each epoch's evaluation returns the next (val_loss, val_acc) given, so that the two
    metrics disagree about which epoch is best."""
    calls = []

    def evaluate(*args, **kwargs):
        REAL_EVALUATE(*args, **kwargs)  # fills the predictions as the loop expects
        calls.append(None)
        return losses[len(calls) - 1], accs[len(calls) - 1]

    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_monitor_val_loss_keeps_the_lowest_loss_epoch_not_the_best_accuracy(monkeypatch):
    losses, accs = [0.9, 0.4, 0.6, 0.7], [0.5, 0.6, 0.8, 0.7]
    _scripted_validation(monkeypatch, losses, accs)
    by_loss = trainer.train(tiny(**{"train.epochs": 4, "train.monitor": "val_loss"}))
    assert by_loss.best_epoch == 2 and by_loss.best_metric("val_loss") == 0.4
    _scripted_validation(monkeypatch, losses, accs)
    by_acc = trainer.train(tiny(**{"train.epochs": 4}))  # the default: val_acc
    assert by_acc.best_epoch == 3 and by_acc.best_val_acc == 0.8


def test_early_stopping_counts_epochs_without_a_gain_in_the_monitored_metric(monkeypatch):
    # the loss stops falling after epoch 1 while the accuracy keeps rising
    _scripted_validation(monkeypatch, [0.3, 0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8, 0.9])
    cfg = tiny(**{"train.epochs": 5, "train.patience": 2, "train.monitor": "val_loss"})
    result = trainer.train(cfg)
    assert result.status == "early_stopped" and len(result.history) == 3
    assert result.reason == "no val_loss gain for 2 epochs; best epoch 1"


def test_an_unknown_monitor_is_refused_with_the_options():
    with pytest.raises(ValueError, match="unknown train.monitor 'val_auc'.*val_f1"):
        tiny(**{"train.monitor": "val_auc"})
