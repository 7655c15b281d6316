"""The CUDA paths of the trainer, checked on a CPU: what they decide is tested with CUDA's
answers mocked (free memory, capability, an unusable install), what they compute with the
CPU standing in (loss scaling, the host-memory feeder, background state writes). The same
paths on a real GPU: ``test_cuda_device.py`` (marked ``cuda``)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import trainer
import trainer.device as device_mod
import trainer.loop as loop
from trainer import TrainConfig, _faults
from trainer import augment as augment_mod
from trainer.data import ImageData
from trainer.data.prefetch import HostBatches
from trainer.resume import load_state, restore, snapshot_state, write_state
from trainer.steps import Batch, make_step

GiB = 1 << 30
CUDA = torch.device("cuda")


@contextlib.contextmanager
def faults(spec: str) -> Iterator[None]:
    previous = _faults.install(_faults.parse(spec))
    try:
        yield
    finally:
        _faults.install(previous)


def tiny(**overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8, "data.batch_size": 64, "model.backbone": "small_cnn",
        "model.width": 8, "optim.name": "adam", "optim.lr": 3e-3, "train.epochs": 2,
        "train.patience": 0,
    }  # fmt: skip
    return TrainConfig.from_flat({**flat, **overrides})


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def rgb_data(n: int = 256, size: int = 8) -> ImageData:
    """Three-channel images (the digits have one), so colour jitter mixes channels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return ImageData(x, y, x[:64], y[:64], ["a", "b", "c", "d"], mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture
def gpu_share():
    """Puts the process's GPU share back after the test."""
    previous = trainer.gpu_share()
    yield
    trainer.set_gpu_share(previous)


# --------------------------------------------------------------------------- the probe (1, 10)


def test_the_probe_halves_the_micro_batch_that_runs_out_of_memory():
    cfg = tiny(**{"data.batch_size": 64})
    with faults("oom_above=16"):  # 64 and 32 do not fit, 16 does
        got = trainer.measure_throughput(cfg, num_classes=10, in_chans=1, steps=1)
    assert got.batch_size == 64 and got.micro_batch == 16
    assert got.images_per_second > 0


def test_a_probe_that_never_fits_raises_probe_out_of_memory():
    with faults("oom_above=1"), pytest.raises(trainer.ProbeOutOfMemory) as info:
        trainer.measure_throughput(tiny(), num_classes=10, in_chans=1, steps=1)
    assert str(info.value).startswith("out of memory at micro-batch 2 x 32 accumulation steps")
    assert "the smallest allowed is 2" in str(info.value)
    assert isinstance(info.value, RuntimeError)  # search init reports it as the row's error


def test_the_probe_steps_with_the_training_loops_step(monkeypatch):
    import trainer.throughput as throughput_mod

    calls = []
    real = throughput_mod.make_step

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(throughput_mod, "make_step", counting)
    cfg = tiny(**{"train.grad_clip": 1.0, "optim.name": "sam_sgd"})
    trainer.measure_throughput(cfg, num_classes=10, in_chans=1, steps=1)
    assert len(calls) == 1 and calls[0]["grad_clip"] == 1.0


# --------------------------------------------------------------------------- memory (3, 4, 6)


@pytest.fixture
def fake_gpu_memory(monkeypatch):
    """A GPU of 80 GiB where 2 GiB are free on the card and this process has reserved
    10 GiB, 4 of them in use (6 GiB cached: the last trial's images)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * GiB)


def test_free_memory_counts_what_this_process_holds_cached(fake_gpu_memory, gpu_share):
    assert device_mod.free_bytes(CUDA) == 8 * GiB  # 2 free on the card + 6 cached here
    # trial 2 places 3 GiB of images on the device, where mem_get_info alone says host
    free = device_mod.free_bytes(CUDA)
    assert loop.data_placement("auto", device=CUDA, needed=3 * GiB, free=free) == "device"
    assert loop.data_placement("auto", device=CUDA, needed=3 * GiB, free=2 * GiB) == "host"
    assert device_mod.free_bytes(torch.device("cpu")) is None


def test_a_gpu_share_bounds_what_placement_may_use(fake_gpu_memory, gpu_share):
    trainer.set_gpu_share(0.1)  # 8 GiB of the card, 4 of them allocated already
    assert device_mod.free_bytes(CUDA) == int(0.1 * 80 * GiB) - 4 * GiB
    trainer.set_gpu_share(0.5)  # 40 GiB: the card's free memory is the bound again
    assert device_mod.free_bytes(CUDA) == 8 * GiB


def test_the_gpu_share_caps_the_allocator_of_a_cuda_run(monkeypatch, gpu_share):
    capped = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: capped.append((f, d))
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_mod, "_tf32_once", lambda: None)
    benchmark = torch.backends.cudnn.benchmark
    try:
        trainer.set_gpu_share(0.25)
        device_mod.configure(CUDA)
        assert capped == [(0.25, 0)]
        assert torch.backends.cudnn.benchmark is True  # shapes are fixed within a trial
        device_mod.configure(torch.device("cpu"))  # nothing to set on a CPU
        assert capped == [(0.25, 0)]
    finally:
        torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize(
    ("share", "error"),
    [(0.0, ValueError), (1.5, ValueError), ("half", TypeError), (True, TypeError)],
)
def test_a_bad_gpu_share_is_refused(share, error, gpu_share):
    with pytest.raises(error, match=r"gpu share must be .*\(0, 1\]"):
        trainer.set_gpu_share(share)


def test_out_of_memory_while_placing_the_images_keeps_them_in_host_memory(monkeypatch):
    """On a GPU the images go to the device first; when that copy runs out of memory they
    stay on the host (the host path trains the same run) instead of halving the batch."""
    data = trainer.load_data(tiny().data)

    def out_of_memory(images, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "_to_device", out_of_memory)
    monkeypatch.setattr(loop, "free_bytes", lambda device: 80 * GiB)
    run = types.SimpleNamespace(device=CUDA, cfg=tiny(), placement_oom=False)
    x_train, x_val = loop._Run._place_images(run, data)
    assert run.data_on == "host" and run.placement_oom
    assert x_train is data.x_train and x_val is data.x_val  # the host copies, not new ones
    assert loop._RESIDENT.images is None


def test_the_images_stay_on_the_device_between_trials_of_the_same_data(monkeypatch):
    copies = []
    monkeypatch.setattr(loop, "_to_device", lambda images, device: copies.append(images) or images)
    monkeypatch.setattr(loop, "free_bytes", lambda device: 80 * GiB)
    data, other = trainer.load_data(tiny().data), rgb_data()
    run = types.SimpleNamespace(device=CUDA, cfg=tiny(), placement_oom=False)
    try:
        first = loop._Run._place_images(run, data)
        again = loop._Run._place_images(run, data)  # the next trial of the worker
        assert [id(c) for c in copies] == [id(data.x_train), id(data.x_val)]
        assert all(a is b for a, b in zip(again, first, strict=True))
        loop._Run._place_images(run, other)  # another data set replaces the first
        assert [id(c) for c in copies[2:]] == [id(other.x_train), id(other.x_val)]
        host = types.SimpleNamespace(device=CUDA, cfg=tiny(**{"data.device_cache": "host"}))
        loop._Run._place_images(host, other)  # a host-path trial frees the device copy
        assert host.data_on == "host" and loop._RESIDENT.images is None
    finally:
        loop._RESIDENT.clear()


# --------------------------------------------------------------------------- colour jitter (5)


def test_training_steps_build_no_tensor_from_python_data(monkeypatch):
    """``torch.tensor(list, device=cuda)`` is a blocking host-to-device copy: on a GPU it
    stalls every step it runs in. After the first epoch (which may make its constants once),
    no step of ours (augmentation, mixing, the optimisation step) may call it."""
    torch_dir = str(Path(torch.__file__).parent)
    calls: dict[int, list[str]] = {}
    epoch_now = [0]
    real_tensor = torch.tensor

    def counted(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if epoch_now[0] and not caller.startswith(torch_dir):
            calls.setdefault(epoch_now[0], []).append(f"{caller}:{sys._getframe(1).f_lineno}")
        return real_tensor(*args, **kwargs)

    real_epoch = loop._Run.train_epoch

    def train_epoch(self, epoch, *args, **kwargs):
        epoch_now[0] = epoch
        try:
            return real_epoch(self, epoch, *args, **kwargs)
        finally:
            epoch_now[0] = 0

    monkeypatch.setattr(torch, "tensor", counted)
    monkeypatch.setattr(loop._Run, "train_epoch", train_epoch)
    augment_mod._gray_weights.cache_clear()
    cfg = tiny(**{
        "data.augment": "strong", "data.cutmix": 0.5, "data.mixup": 0.5, "train.epochs": 3,
        "optim.name": "sam_adam", "train.grad_clip": 1.0, "train.ema_decay": 0.9,
    })  # fmt: skip
    result = trainer.train(cfg, data=rgb_data())
    assert result.status == "complete"
    assert len(calls.get(1, [])) <= 1, calls  # the luma weights, made once
    assert calls.get(2, []) == [] and calls.get(3, []) == [], calls


def test_colour_jitter_is_unchanged_by_its_cached_weights():
    aug = augment_mod.make_augment("none", image_size=8, color_jitter=0.4)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    first = aug(x, torch.Generator().manual_seed(2))
    again = aug(x, torch.Generator().manual_seed(2))  # the weights now come from the cache
    assert torch.equal(first, again)
    gray = torch.tensor((0.299, 0.587, 0.114))
    assert torch.equal(augment_mod._gray_weights(torch.device("cpu"), torch.float32), gray)


# --------------------------------------------------------------------------- precision (9)


@pytest.mark.parametrize(
    ("capability", "dtype", "name"),
    [((7, 0), torch.float16, "fp16"), ((7, 5), torch.float16, "fp16"),
     ((8, 0), torch.bfloat16, "bf16"), ((9, 0), torch.bfloat16, "bf16")],
)  # fmt: skip
def test_bf16_from_compute_capability_8_and_fp16_below(monkeypatch, capability, dtype, name):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_mod.amp_dtype(CUDA) is dtype
    assert device_mod.precision_name(device_mod.amp_dtype(CUDA)) == name
    assert device_mod.amp_dtype(torch.device("cpu")) is None
    assert device_mod.precision_name(None) == "fp32"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(steps: int = 3, size: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(size, 3, 2, 2, generator=g)
        y = torch.randint(0, 3, (size,), generator=g)
        out.append(Batch(x, y, y))
    return out


def run_steps(name: str, *, scaler: torch.amp.GradScaler | None, clip: float = 0.0) -> nn.Module:
    model = mlp()
    opt = trainer.create_optimizer(
        model.parameters(), trainer.OptimConfig(name=name, lr=0.05, weight_decay=1e-3, rho=0.1)
    )
    step = make_step(model, opt, nn.CrossEntropyLoss(), grad_clip=clip, scaler=scaler)
    for b in batches():
        step(b.split(4))  # two micro-batches: accumulation under the scaler too
    return model


@pytest.mark.parametrize("clip", [0.0, 0.05])
@pytest.mark.parametrize("name", ["sgd", "adam", "sam_sgd", "sam_adam"])
def test_loss_scaling_leaves_the_update_as_it_was(name, clip):
    """fp16 needs the loss scaled before backward and the gradient unscaled before clipping,
    SAM's climb and the step: with a power-of-two scale that round trip is exact."""
    plain = run_steps(name, scaler=None, clip=clip)
    scaled = run_steps(name, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12), clip=clip)
    for (k, a), b in zip(plain.state_dict().items(), scaled.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=k)


class _InfLoss(nn.Module):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.sum() * float("inf")


@pytest.mark.parametrize("name", ["sgd", "sam_adam"])
def test_an_overflowed_step_is_skipped_and_the_scale_lowered(name):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = trainer.create_optimizer(model.parameters(), trainer.OptimConfig(name=name, lr=0.05))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    step = make_step(model, opt, _InfLoss(), scaler=scaler)
    step(batches(1)[0].split(8))
    for k, v in model.state_dict().items():  # SAM climbed nowhere and stepped nowhere
        assert torch.equal(v, before[k]), k
    assert scaler.get_scale() < 2.0**12


# --------------------------------------------------------------------------- host path (2)


def test_host_batches_come_in_the_epochs_order():
    images = torch.arange(40 * 2, dtype=torch.uint8).view(40, 2)
    feeder = HostBatches(images, torch.device("cpu"), batch=8)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    got = [b.clone() for b in feeder.epoch(order, steps=5)]
    assert [torch.equal(g, images[order[i * 8 : (i + 1) * 8]]) for i, g in enumerate(got)] == [
        True
    ] * 5


def test_host_batches_stop_their_thread_when_the_epoch_is_left_early():
    before = threading.active_count()
    feeder = HostBatches(torch.zeros(64, 3, dtype=torch.uint8), torch.device("cpu"), batch=4)
    epoch = feeder.epoch(torch.arange(64), steps=16)
    next(epoch)
    assert threading.active_count() == before + 1  # the gathering thread
    epoch.close()  # a budget stop, a non-finite loss: the loop leaves the epoch
    assert threading.active_count() == before


def test_an_error_in_the_gathering_thread_reaches_the_training_loop():
    feeder = HostBatches(torch.zeros(8, 3, dtype=torch.uint8), torch.device("cpu"), batch=4)
    with pytest.raises(IndexError):
        list(feeder.epoch(torch.tensor([0, 1, 2, 3, 4, 5, 6, 99]), steps=2))


# --------------------------------------------------------------------------- resume state (7, 13)


class _KeepAfterEpoch1:
    """At epoch 2's report the epoch-state file holds the state after epoch 1: keep it."""

    def __init__(self, last: Path, kept: Path) -> None:
        self.last, self.kept = last, kept

    def report(self, epoch: int, metrics: dict) -> None:
        if epoch == 2:
            self.kept.write_bytes(self.last.read_bytes())

    def should_stop(self) -> bool:
        return False


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tmp_path):
    """Dropout draws from torch's global generator: the state keeps it (and CUDA's, on a GPU)."""
    cfg = tiny(**{"model.dropout": 0.5, "train.epochs": 3})
    whole = trainer.train(cfg)
    last, kept = tmp_path / "last.safetensors", tmp_path / "kept.safetensors"
    trainer.train(cfg, reporter=_KeepAfterEpoch1(last, kept), last_checkpoint_path=last)
    torch.manual_seed(12345)  # whatever the process drew meanwhile
    resumed = trainer.train(cfg, resume_from=kept)
    assert resumed.adjustments == {"resumed_from_epoch": 1}
    assert strip(resumed.history) == strip(whole.history)
    state = load_state(kept, config=cfg.to_flat())
    assert state.cpu_rng is not None and state.cuda_rng is None  # no CUDA generator here


def test_states_written_in_the_background_resume_the_same(tmp_path, monkeypatch):
    """On a GPU the state file is written on a thread while the next epoch trains."""
    import trainer.resume as resume_mod

    writers = []
    real_write = resume_mod.write_state
    last, kept = tmp_path / "last.safetensors", tmp_path / "kept.safetensors"

    def write_state(path, snapshot):
        writers.append(threading.current_thread().name)
        out = real_write(path, snapshot)
        if snapshot[1]["epoch"] == 1:
            kept.write_bytes(Path(path).read_bytes())
        return out

    monkeypatch.setattr(loop, "_write_in_background", lambda cfg: True)
    monkeypatch.setattr(loop, "write_state", write_state)
    cfg = tiny(**{"train.epochs": 3})
    whole = trainer.train(cfg)
    trainer.train(cfg, last_checkpoint_path=last)
    assert len(writers) == 2 and all(name.startswith("resume-state") for name in writers)
    assert not last.exists()  # removed once the last write finished
    resumed = trainer.train(cfg, resume_from=kept)
    assert strip(resumed.history) == strip(whole.history)


def test_a_snapshot_is_one_contiguous_copy_that_training_cannot_change():
    model = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = [{"epoch": 1.0}]
    tensors, meta = snapshot_state(
        config={}, epoch=1, history=history, best_epoch=1, best_acc=0.5, since_best=0,
        model=model, best_state=None, optimizer=opt, scheduler=None,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    weight = tensors["model/weight"]
    assert weight.is_contiguous() and weight.untyped_storage().data_ptr() != (
        model.weight.untyped_storage().data_ptr()
    )
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(weight, model.weight)


def test_the_fp16_loss_scale_is_resumed_where_the_run_left_it(tmp_path):
    # A GradScaler that had backed off to 1024 after overflows, and counted 7 good steps
    # since: a resumed run starts from there, not from the default 65,536 (which would skip
    # steps again until it has backed off). The CPU scaler has the same state as the CUDA one.
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": 7})
    snap = snapshot_state(
        config={}, epoch=1, history=[], best_epoch=1, best_acc=0.5, since_best=0, model=model,
        best_state=None, optimizer=opt, scheduler=None, generator=torch.Generator(),
        scaler=scaler,
    )  # fmt: skip
    path = write_state(tmp_path / "s.safetensors", snap)
    fresh = torch.amp.GradScaler("cpu")
    assert fresh.get_scale() == 65536.0
    restore(
        load_state(path, config={}), model=nn.Linear(3, 2), optimizer=opt, scheduler=None,
        generator=torch.Generator(), scaler=fresh,
    )  # fmt: skip
    assert fresh.get_scale() == 1024.0
    assert fresh.state_dict()["_growth_tracker"] == 7


def test_a_run_waits_for_its_last_background_write_before_removing_the_file(tmp_path, monkeypatch):
    import time

    import trainer.resume as resume_mod

    real_write = resume_mod.write_state

    def slow_write(path, snapshot):
        time.sleep(0.3)  # still writing when the run ends
        return real_write(path, snapshot)

    monkeypatch.setattr(loop, "_write_in_background", lambda cfg: True)
    monkeypatch.setattr(loop, "write_state", slow_write)
    last = tmp_path / "last.safetensors"
    trainer.train(tiny(**{"train.epochs": 3}), last_checkpoint_path=last)
    assert list(tmp_path.iterdir()) == []  # no state file, no temporary file left behind


# --------------------------------------------------------------------------- evaluation reuse (8)


def test_the_result_keeps_the_chosen_models_validation_predictions():
    from trainer.evaluate import predict_logits

    cfg = tiny(**{"train.epochs": 3, "train.channels_last": False})
    result = trainer.train(cfg)
    data = trainer.load_data(cfg.data)
    pred = result.val_predictions
    assert pred is not None and pred.device.type == "cpu" and len(pred) == len(data.y_val)
    assert (pred == data.y_val).double().mean().item() == pytest.approx(result.best_val_acc)
    again = predict_logits(result.model, data.x_val, mean=data.mean, std=data.std).argmax(1)
    assert (again == pred).double().mean().item() > 0.99


def test_the_confusion_matrix_note_uses_those_predictions(monkeypatch, tmp_path):
    pytest.importorskip("optuna")
    import trainer.evaluate as evaluate_mod
    from search.report import notes

    cfg = tiny()
    result = trainer.train(cfg)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the validation set was evaluated again")

    monkeypatch.setattr(evaluate_mod, "predict_logits", no_second_pass)
    path = notes._confusion_csv(cfg, result, tmp_path, 0)
    rows = path.read_text().splitlines()[1:]
    total = sum(int(v) for row in rows for v in row.split(",")[1:])
    assert total == len(result.val_predictions)


# --------------------------------------------------------------------------- device choice (12)


@pytest.fixture
def broken_cuda(monkeypatch):
    """A machine with an NVIDIA GPU that torch cannot use; the warning is shown once per
    process, so its memory is cleared."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_has_nvidia_gpu", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device_mod._warn_once.cache_clear()
    yield
    device_mod._warn_once.cache_clear()


def test_a_cpu_only_torch_on_a_gpu_machine_warns_once_naming_the_cause(
    broken_cuda, monkeypatch, caplog
):
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert trainer.select_device("auto").type in ("cpu", "mps")
        trainer.select_device("auto")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("trainer")]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "training on the CPU although this machine has an NVIDIA GPU" in lines[0]
    assert "CPU-only build; install a CUDA build of torch" in lines[0]


def test_a_driver_cuda_refuses_is_named(broken_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")

    def init():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).")

    monkeypatch.setattr(torch.cuda, "init", init)
    problem = device_mod.cuda_problem()
    assert "driver on your system is too old" in problem and "update the NVIDIA driver" in problem


def test_gpus_hidden_on_purpose_are_no_problem(broken_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_mod.cuda_problem() is None


def test_train_device_cuda_without_a_usable_cuda_is_refused_with_the_fix(broken_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match=r"train.device = 'cuda' but CUDA is not usable here") as e:
        trainer.select_device("cuda")
    assert "CPU-only build" in str(e.value) and 'set train.device = "auto" or "cpu"' in str(e.value)
    data = trainer.load_data(tiny().data)
    with pytest.raises(ValueError, match="CUDA is not usable"):  # search run's preflight
        trainer.check_model(tiny(**{"train.device": "cuda"}), data)


def test_a_malformed_device_name_is_a_value_error():
    with pytest.raises(ValueError, match="train.device must be auto, cpu, cuda, cuda:N or mps"):
        trainer.select_device("gpu")


def test_cuda_workers_get_expandable_allocator_segments_unless_set(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    import os

    device_mod.cuda_usable()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    device_mod.cuda_usable()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"


# --------------------------------------------------------------------------- speed switches


def test_adam_adamw_and_sgd_are_fused_on_cuda_and_not_on_the_cpu():
    from trainer.optim import _fused

    class CudaParam:
        is_cuda = True

        def is_floating_point(self) -> bool:
            return True

    assert _fused([CudaParam(), CudaParam()]) == {"fused": True}
    assert _fused([{"params": [CudaParam()], "lr": 0.1}]) == {"fused": True}  # SAM's groups
    cpu = trainer.create_optimizer(nn.Linear(2, 2).parameters(), "adam")
    assert not cpu.defaults.get("fused")  # the CPU arithmetic stays as it was


def test_compile_is_in_place_and_keeps_weights_and_state_dict_keys(monkeypatch):
    compiled = []
    real_compile = nn.Module.compile

    def eager_compile(self, *args, **kwargs):  # dynamo's tracing, without a C++ build
        compiled.append(type(self).__name__)
        return real_compile(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    cfg = tiny(**{"train.ema_decay": 0.9})
    plain = trainer.train(cfg)
    fast = trainer.train(cfg.replace({"train.compile": True}))
    assert compiled == ["Classifier"]
    assert fast.model.state_dict().keys() == plain.model.state_dict().keys()
    torch._dynamo.reset()
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


# --------------------------------------------------------------------------- decoding pool (11)


def test_the_decode_pool_forks_unless_cuda_has_started(monkeypatch):
    from trainer.data import decode

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert decode._start_method() == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert decode._start_method() == "forkserver"


def test_images_decode_with_forkserver_workers(tmp_path, monkeypatch, make_classes):
    """What a worker with a CUDA context gets: workers started from a fresh server process."""
    from trainer.data import decode

    monkeypatch.setattr(decode, "_start_method", lambda: "forkserver")
    monkeypatch.setenv("HPSEARCH_DECODE_WORKERS", "2")
    n = decode.PARALLEL_MIN_FILES // 2 + 4
    make_classes(tmp_path / "imgs", {"cat": n, "dog": n})
    cfg = trainer.DataConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8)
    data = trainer.load_data(cfg)
    assert len(data.x_train) + len(data.x_val) == 2 * n
