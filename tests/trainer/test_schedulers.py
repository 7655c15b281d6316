"""Learning-rate schedules by name (the same lrs as torch's schedulers), warmup, weight EMA."""

from __future__ import annotations

import math

import pytest
import torch

import trainer
import trainer.loop as loop
from trainer import SchedConfig, TrainConfig
from trainer.config import SCHEDULERS
from trainer.evaluate import predict_logits

LR = 0.1


def optimizer(name: str = "sgd") -> torch.optim.Optimizer:
    return trainer.create_optimizer([torch.nn.Parameter(torch.zeros(2))], name, lr=LR)


def lrs(sched: trainer.schedulers.Scheduler, opt, *, steps: int, metrics=None) -> list[float]:
    """The lr of every step over ``steps``, calling epoch_end like the loop does."""
    out = []
    for t in range(steps):
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
        if (t + 1) % sched.steps_per_epoch == 0:
            epoch = (t + 1) // sched.steps_per_epoch
            sched.epoch_end(epoch, metrics[epoch - 1] if metrics else 0.0)
    return out


def test_registry_lists_every_schedule_the_config_accepts():
    assert trainer.list_schedulers() == sorted(SCHEDULERS)
    assert set(SCHEDULERS) == {"none", "cosine", "plateau", "step", "onecycle"}
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        trainer.create_scheduler(optimizer(), "cosin", epochs=3, steps_per_epoch=2)
    with pytest.raises(ValueError, match="sched.warmup_epochs must be >= 0"):
        SchedConfig(warmup_epochs=-1)


@pytest.mark.parametrize("opt_name", ["adam", "sam_sgd"])  # SAM: its base optimizer's groups
def test_cosine_is_torchs_cosine_annealing_stepped_per_epoch(opt_name):
    epochs, spe = 6, 3
    opt = optimizer(opt_name)
    got = lrs(
        trainer.create_scheduler(opt, SchedConfig(min_lr=1e-3), epochs=epochs, steps_per_epoch=spe),
        opt,
        steps=epochs * spe,
    )
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs, eta_min=1e-3)
    want = []
    for _ in range(epochs):
        want += [ref_opt.param_groups[0]["lr"]] * spe
        ref_opt.step()
        ref.step()
    assert got == pytest.approx(want, rel=1e-12)


def test_plateau_is_torchs_reduce_on_plateau_on_val_acc():
    metrics = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.69, 0.7]
    opt = optimizer()
    cfg = SchedConfig(name="plateau", factor=0.5, patience=1)
    got = lrs(trainer.create_scheduler(opt, cfg, epochs=8, steps_per_epoch=1), opt, steps=8,
              metrics=metrics)  # fmt: skip
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=1)
    want = []
    for m in metrics:
        want.append(ref_opt.param_groups[0]["lr"])
        ref.step(m)
    assert got == pytest.approx(want) and min(got) < LR  # it did reduce


def test_onecycle_is_torchs_one_cycle_per_step():
    epochs, spe = 4, 5
    opt = optimizer()
    got = lrs(trainer.create_scheduler(opt, "onecycle", epochs=epochs, steps_per_epoch=spe), opt,
              steps=epochs * spe)  # fmt: skip
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=LR, total_steps=epochs * spe, cycle_momentum=False
    )
    want = []
    for _ in range(epochs * spe):
        want.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert got == pytest.approx(want, rel=1e-9)


def test_step_multiplies_by_factor_every_step_epochs():
    opt = optimizer()
    cfg = SchedConfig(name="step", factor=0.1, step_epochs=2)
    got = lrs(trainer.create_scheduler(opt, cfg, epochs=5, steps_per_epoch=1), opt, steps=5)
    assert got == pytest.approx([LR, LR, LR * 0.1, LR * 0.1, LR * 0.01])


@pytest.mark.parametrize("name", ["none", "cosine", "step", "onecycle", "plateau"])
def test_warmup_rises_linearly_then_the_schedule_starts(name):
    epochs, spe, warm = 5, 4, 2
    opt = optimizer()
    cfg = SchedConfig(name=name, warmup_epochs=warm, step_epochs=1, factor=0.5)
    got = lrs(trainer.create_scheduler(opt, cfg, epochs=epochs, steps_per_epoch=spe), opt,
              steps=epochs * spe, metrics=[0.5] * epochs)  # fmt: skip
    plain_opt = optimizer()
    plain = trainer.create_scheduler(
        plain_opt, SchedConfig(name=name, step_epochs=1, factor=0.5), epochs=epochs - warm,
        steps_per_epoch=spe,
    )  # fmt: skip
    after = lrs(plain, plain_opt, steps=(epochs - warm) * spe, metrics=[0.5] * epochs)
    ramp = [(t + 1) / (warm * spe) for t in range(warm * spe)]
    # during the warmup: a linear ramp up to the schedule's first lr (onecycle's is lr / 25)
    assert got[: warm * spe] == pytest.approx([r * after[0] for r in ramp])
    # after the warmup: the plain schedule over the remaining epochs
    assert got[warm * spe :] == pytest.approx(after)


def test_the_loop_follows_the_schedule():
    cfg = TrainConfig.from_flat({
        "data.image_size": 8, "model.width": 8, "train.epochs": 3, "train.patience": 0,
        "optim.lr": 0.01, "sched.name": "step", "sched.step_epochs": 1, "sched.factor": 0.5,
    })  # fmt: skip
    result = trainer.train(cfg)
    assert [h["lr"] for h in result.history] == pytest.approx([0.01, 0.005, 0.0025])


# --------------------------------------------------------------------------- EMA


def test_ema_decay_is_checked():
    with pytest.raises(ValueError, match=r"train.ema_decay must be in \[0, 1\)"):
        TrainConfig.from_flat({"train.ema_decay": 1.0})


def test_ema_weights_are_the_running_average_and_the_ones_evaluated_and_kept(monkeypatch):
    decay = 0.8
    real = loop.make_step
    snapshots: list[dict[str, torch.Tensor]] = []

    def spy(model, *args, **kwargs):  # record the training weights after every step
        step = real(model, *args, **kwargs)

        def recorded(micro):
            out = step(micro)
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return out

        return recorded

    monkeypatch.setattr(loop, "make_step", spy)
    cfg = TrainConfig.from_flat({
        "data.image_size": 8, "model.width": 8, "train.epochs": 1, "train.patience": 0,
        "train.ema_decay": decay,
    })  # fmt: skip
    result = trainer.train(cfg)
    ema = dict(snapshots[0])  # the first update copies the weights (timm's ModelEmaV3)
    for snap in snapshots[1:]:
        for k, v in snap.items():
            ema[k] = decay * ema[k] + (1 - decay) * v if v.is_floating_point() else v
    kept = result.model.state_dict()
    for k in ema:
        torch.testing.assert_close(kept[k], ema[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(kept["head.1.weight"], snapshots[-1]["head.1.weight"])
    data = trainer.load_data(cfg.data)
    logits = predict_logits(result.model, data.x_val, mean=data.mean, std=data.std)
    val_acc = (logits.argmax(1) == data.y_val).float().mean().item()
    assert val_acc == pytest.approx(result.best_val_acc)  # the EMA was evaluated


def test_a_resumed_ema_run_equals_an_uninterrupted_one(tmp_path):
    cfg = TrainConfig.from_flat({
        "data.image_size": 8, "model.width": 8, "train.epochs": 2, "train.patience": 0,
        "train.ema_decay": 0.9, "sched.warmup_epochs": 1, "data.cutmix": 0.5,
    })  # fmt: skip
    whole = trainer.train(cfg)
    last, kept = tmp_path / "last.safetensors", tmp_path / "kept.safetensors"

    class KeepAfterEpoch1:
        def report(self, epoch, metrics):
            if epoch == 2:
                kept.write_bytes(last.read_bytes())

        def should_stop(self):
            return False

    trainer.train(cfg, reporter=KeepAfterEpoch1(), last_checkpoint_path=last)
    resumed = trainer.train(cfg, resume_from=kept)
    assert resumed.adjustments == {"resumed_from_epoch": 1}
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert math.isfinite(resumed.best_val_acc)
