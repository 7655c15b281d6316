"""The trainer's CUDA paths on a real GPU: no host sync in a step, bf16 and fp16 with loss
scaling, out-of-memory recovery in the probe and in placement, the host-memory path, the GPU
share, images kept between trials, the CUDA RNG in the resume state, fused optimizers,
``train.compile``. Marked ``cuda``: each skips itself where CUDA is not available;
``benchmarks/gpu_check.sh`` runs them on a lent device (no Optuna needed)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import trainer
import trainer.loop as loop
from trainer import TrainConfig, _faults
from trainer.data import ImageData
from trainer.resume import restore, snapshot_state

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GiB = 1 << 30


@contextlib.contextmanager
def faults(spec: str) -> Iterator[None]:
    previous = _faults.install(_faults.parse(spec))
    try:
        yield
    finally:
        _faults.install(previous)


@contextlib.contextmanager
def sync_mode(mode: str) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.fixture(autouse=True)
def _fresh_share():
    previous = trainer.set_gpu_share(1.0)
    loop._RESIDENT.clear()
    yield
    trainer.set_gpu_share(previous)
    loop._RESIDENT.clear()
    torch.cuda.empty_cache()


def tiny(**overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8, "data.batch_size": 64, "model.backbone": "small_cnn",
        "model.width": 8, "optim.name": "adam", "optim.lr": 3e-3, "train.epochs": 2,
        "train.patience": 0, "train.device": "cuda",
    }  # fmt: skip
    return TrainConfig.from_flat({**flat, **overrides})


def rgb_data(n: int = 512, size: int = 16) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return ImageData(x, y, x[:128], y[:128], ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3)


def weights(result: trainer.TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in result.model.state_dict().items()}


# --------------------------------------------------------------------------- no host sync


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("optim", ["adam", "sam_sgd"])
def test_training_steps_never_wait_for_the_gpu(monkeypatch, precision, optim):
    """Augmentation, mixing, the step (clipping, SAM, loss scaling), the schedule and the EMA
    of every step after the first epoch run under ``set_sync_debug_mode("error")``: any host
    wait there raises. The non-finite check every 8 steps and the epoch end read on purpose."""
    if precision == "fp16":
        monkeypatch.setattr(loop, "amp_dtype", lambda device: torch.float16)
    strict = [False]

    def guarded(fn):
        def call(*args, **kwargs):
            if not strict[0]:
                return fn(*args, **kwargs)
            with sync_mode("error"):
                return fn(*args, **kwargs)

        return call

    real_init, real_batches, real_epoch = (
        loop._Run.__init__,
        loop._Run.batches,
        loop._Run.train_epoch,
    )

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.step = guarded(self.step)
        self.scheduler.step_update = guarded(self.scheduler.step_update)
        if self.ema is not None:
            self.ema.update = guarded(self.ema.update)

    def batches(self):
        it = real_batches(self)
        while True:
            try:
                batch = guarded(next)(it)
            except StopIteration:
                return
            yield batch

    def train_epoch(self, epoch, *args, **kwargs):
        strict[0] = epoch >= 2  # the first epoch autotunes cuDNN, which waits
        try:
            return real_epoch(self, epoch, *args, **kwargs)
        finally:
            strict[0] = False

    monkeypatch.setattr(loop._Run, "__init__", init)
    monkeypatch.setattr(loop._Run, "batches", batches)
    monkeypatch.setattr(loop._Run, "train_epoch", train_epoch)
    cfg = tiny(**{
        "data.augment": "strong", "data.cutmix": 0.5, "data.mixup": 0.5, "optim.name": optim,
        "train.grad_clip": 1.0, "train.ema_decay": 0.9, "train.accum_steps": 2,
        "sched.name": "onecycle", "train.epochs": 3,
    })  # fmt: skip
    result = trainer.train(cfg, data=rgb_data())
    assert result.status == "complete"
    assert result.adjustments["precision"] == precision


# --------------------------------------------------------------------------- precision


def test_bf16_from_compute_capability_8_is_recorded():
    result = trainer.train(tiny())
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert result.adjustments["precision"] == expected
    assert result.status == "complete"


def test_fp16_with_loss_scaling_learns(monkeypatch):
    monkeypatch.setattr(loop, "amp_dtype", lambda device: torch.float16)
    result = trainer.train(tiny(**{"train.epochs": 4, "optim.name": "sam_adam"}))
    assert result.adjustments["precision"] == "fp16"
    assert result.best_val_acc > 0.3  # ten digits: chance is 0.1


def test_optimizers_are_fused_on_the_gpu():
    params = list(torch.nn.Linear(4, 2).cuda().parameters())
    for name in ("adam", "adamw", "sgd"):
        assert trainer.create_optimizer(params, name).defaults["fused"] is True, name
    sam = trainer.create_optimizer(params, "sam_adam")
    assert sam.base_optimizer.defaults["fused"] is True


# --------------------------------------------------------------------------- out of memory


def test_a_probe_too_big_for_its_share_raises_probe_out_of_memory_and_the_gpu_recovers():
    """A real out-of-memory error: a 0.2 % share cannot hold ResNet-50 and Adam at any
    micro-batch. The probe halves down to the smallest, then says so; the next probe runs."""
    cfg = TrainConfig.from_flat({
        "model.backbone": "resnet50", "data.image_size": 224, "data.batch_size": 64,
        "train.device": "cuda",
    })  # fmt: skip
    trainer.set_gpu_share(0.002)
    with pytest.raises(trainer.ProbeOutOfMemory, match="smallest allowed is 2"):
        trainer.measure_throughput(cfg, num_classes=10, steps=1)
    trainer.set_gpu_share(1.0)
    got = trainer.measure_throughput(cfg, num_classes=10, steps=2)
    assert got.micro_batch == 64 and got.images_per_second > 0


def test_a_probe_waits_for_the_gpu_once(monkeypatch):
    waits = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: waits.append(a))
    got = trainer.measure_throughput(tiny(), num_classes=10, in_chans=1, steps=3)
    assert got.steps == 3 and got.images_per_second > 0
    assert waits == []  # timed by events: one event wait, no device-wide synchronize


def test_out_of_memory_in_a_step_halves_the_micro_batch_on_the_gpu():
    with faults("oom_above=32"):
        result = trainer.train(tiny())
    assert result.status == "complete"
    assert result.adjustments["micro_batch"] == 32 and result.adjustments["accum_steps"] == 2


def test_out_of_memory_while_placing_the_images_trains_from_host_memory(monkeypatch):
    def out_of_memory(images, device):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(loop, "_to_device", out_of_memory)
    result = trainer.train(tiny(**{"data.device_cache": "device"}))
    assert result.status == "complete"
    assert result.adjustments["device_cache"] == "host"
    assert "oom_retries" not in result.adjustments  # the batch stayed whole


# --------------------------------------------------------------------------- memory


def test_free_memory_counts_this_processs_cached_memory():
    device = torch.device("cuda")
    block = torch.empty(GiB, dtype=torch.uint8, device=device)
    del block  # back in the allocator's cache, not on the card's free list
    card_free = torch.cuda.mem_get_info(device)[0]
    assert trainer.device.free_bytes(device) >= card_free + GiB - (64 << 20)


def test_a_gpu_share_caps_this_process():
    device = torch.device("cuda")
    total = torch.cuda.mem_get_info(device)[1]
    trainer.set_gpu_share(0.05)
    trainer.device.configure(device)
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(0.1 * total), dtype=torch.uint8, device=device)
    assert trainer.device.free_bytes(device) <= 0.05 * total
    trainer.set_gpu_share(1.0)
    trainer.device.configure(device)
    torch.empty(int(0.1 * total), dtype=torch.uint8, device=device)  # the cap is lifted


def test_the_images_are_uploaded_once_for_the_trials_of_a_worker(monkeypatch):
    uploads = []
    real = loop._to_device
    monkeypatch.setattr(loop, "_to_device", lambda x, d: uploads.append(x.shape) or real(x, d))
    data = trainer.load_data(tiny().data)
    trainer.train(tiny(), data=data)
    trainer.train(tiny(**{"optim.lr": 1e-3}), data=data)  # the next trial, the same images
    assert len(uploads) == 2  # training and validation images, once


# --------------------------------------------------------------------------- host path


def test_the_host_path_trains_as_the_device_path(monkeypatch):
    """The same images in the same order, fed from host memory through pinned buffers and a
    copy stream. cuDNN's kernels are chosen per process and deterministic here, so the two
    runs agree to rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    cfg = tiny(**{"data.augment": "light", "train.epochs": 2})
    data = rgb_data()
    on_device = trainer.train(cfg.replace({"data.device_cache": "device"}), data=data)
    on_host = trainer.train(cfg.replace({"data.device_cache": "host"}), data=data)
    a, b = weights(on_device), weights(on_host)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)


# --------------------------------------------------------------------------- resume state


def test_the_resume_state_keeps_the_cuda_generator():
    model = torch.nn.Linear(4, 2).cuda()
    opt = torch.optim.Adam(model.parameters())
    gen = torch.Generator(device="cuda").manual_seed(3)
    torch.cuda.manual_seed(7)
    tensors, meta = snapshot_state(
        config={}, epoch=1, history=[], best_epoch=1, best_acc=0.0, since_best=0, model=model,
        best_state=None, optimizer=opt, scheduler=None, generator=gen,
    )  # fmt: skip
    expected = torch.rand(5, device="cuda")  # what dropout would draw next
    torch.cuda.manual_seed(99)
    state = types.SimpleNamespace(
        model={k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, ema=None,
        optimizer={"state": {}, "param_groups": opt.state_dict()["param_groups"]},
        scheduler=None, rng=tensors["rng"], cpu_rng=tensors["rng_cpu"],
        cuda_rng=tensors["rng_cuda"], path="memory",
    )  # fmt: skip
    restore(state, model=model, optimizer=opt, scheduler=None, generator=gen)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


# --------------------------------------------------------------------------- compile, decode


def test_compile_keeps_the_state_dict_keys_on_the_gpu():
    cfg = tiny(**{"train.ema_decay": 0.9})
    plain = trainer.train(cfg)
    fast = trainer.train(cfg.replace({"train.compile": True}))
    assert fast.model.state_dict().keys() == plain.model.state_dict().keys()
    assert fast.status == "complete" and fast.best_val_acc > 0.3


def test_decoding_after_cuda_started_uses_forkserver_workers(tmp_path, monkeypatch):
    from PIL import Image

    from trainer.data import decode

    torch.zeros(1, device="cuda")  # a CUDA context in this process
    assert decode._start_method() == "forkserver"
    for i in range(decode.PARALLEL_MIN_FILES + 8):
        folder = tmp_path / "imgs" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (i, 2 * i % 256, 50)).save(folder / f"{i}.png")
    monkeypatch.setenv("HPSEARCH_DECODE_WORKERS", "2")
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = trainer.DataConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8)
    data = trainer.load_data(cfg)
    assert len(data.x_train) + len(data.x_val) == decode.PARALLEL_MIN_FILES + 8
    assert Path(tmp_path / "cache").exists()
