"""``search init DIR``: a study file written from an image folder and this machine.

``plan_study(root, ...)`` scans the folder once with training's own listing and decoding pass
(so the decoded-image cache is warm for the first trial), probes this device's training speed
for the candidate backbones at the proposed image size, and chooses what fits the per-trial
limit: image size, backbones, batch sizes, epochs. On top of that it chooses how the budget is
spent (``_choose_schedule``, ``_choose_sizes``): successive halving over epochs, whose rungs the
budget decides; two or three image sizes to search; and a share of the budget that trains the
winner longer at the end. ``render_study(plan)`` writes it as a commented TOML study file with a
``[params]`` space and the reasons; ``init_study`` does both for the CLI.

Running it twice gives the same file: the probes are cached per device, backbone, size, batch
size and class count next to the decoded images (``--remeasure`` probes again), the estimates
in the file are rounded, and nothing in it depends on the time of day.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

import torch

from search.experiments.cost import trial_seconds
from search.experiments.run import REFIT_MAX_EPOCHS_FACTOR
from search.study.budget import parse_duration
from search.study.samplers import bracket_rungs, expected_epoch_share
from trainer import DataConfig, TrainConfig, load_data, measure_throughput, select_device
from trainer._files import atomic_write
from trainer.data import load_test
from trainer.data.loaders import FolderScan, cache_dir, detect_layout, scan_folder, unreadable_files
from trainer.throughput import device_label

# Candidate backbones, cheapest first on most devices. All train from scratch: pretrained
# weights cannot be fetched offline, and from-scratch cost is what the probe measures.
CANDIDATES = ("seed_cnn", "small_cnn", "resnet18", "resnet34", "efficientnet_b2", "resnet50")
# A deeper network of a family is never faster at the same size and batch: once the shallower
# one is over the limit, the deeper one is left out without spending a probe on it.
SHALLOWER = {"resnet34": "resnet18", "resnet50": "resnet34"}
# The image size is the largest at which this workhorse finishes a trial within the limit.
REFERENCE = "resnet18"
SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 192, 224)
MAX_SIZES = 3  # image sizes in the searched space
MIN_SIZE = 32  # below this, photos lose what tells classes apart (unless the images are smaller)
EPOCHS, MIN_EPOCHS, PATIENCE = 10, 3, 3
# Per trial beyond the images: building the model, the first batches, checkpoints (seconds;
# a seed_cnn trial of 2 epochs took ~3 s more than its images on a 2-core CPU).
TRIAL_OVERHEAD_S = 5.0
# The per-trial limit is the wall budget over this: the budget buys at least this many full
# trials, and more since cheap configurations and pruned trials end sooner.
TRIALS_PER_WALL = 4
DEFAULT_WALL = "10m"
PROBE_STEPS, PROBE_MAX_SECONDS = 2, 3.0
# untimed steps before the probe's: None is the device's own count (trainer.measure_throughput:
# one on a CPU, two on a GPU, whose first steps pay for the allocator and cuDNN's autotuning)
PROBE_WARMUP = None
IMBALANCE = 3.0  # largest class / smallest class at which the focal loss joins the space
# Multi-fidelity over epochs: successive halving (Optuna's is asynchronous, ASHA, so it suits
# --workers K as well) judges a trial after a few epochs (the lowest rung), then after 3x,
# 9x, ...; one in REDUCTION goes on at each rung. The schedule is the longest of SCHEDULES for
# which BRACKETS_PER_SEARCH full brackets of a typical kept configuration (REDUCTION^k trials
# started, one carried to the top) fit the search's time, and the refit's share holds
# REFIT_TOP_RUNGS times the top rung (train.epochs) of it.
RUNG_MIN, REDUCTION, BRACKETS_PER_SEARCH, REFIT_TOP_RUNGS = 2, 3, 3, 2
# (lowest rung, rungs above it), longest first: top rungs 54, 18, 9, 6 and 3 epochs
SCHEDULES = ((2, 3), (2, 2), (1, 2), (2, 1), (1, 1))
# The share of the wall clock kept to train the winner longer (search run's refit): the
# issue's hard folder gained 2 points from its winner trained 30 epochs instead of 6-10. The
# rungs are chosen so that a quarter holds the top rung of a typical kept configuration twice
# (REFIT_TOP_RUNGS), while the search keeps three quarters of the budget.
REFIT_SHARE = 0.25
# The test split search init holds out (data.test_fraction), so that `search confirm` can
# report accuracy on images no trial was chosen by: 10% of the images when that is at least
# MIN_TEST_IMAGES, else 20% when that is, else none. Fewer test images would measure accuracy
# to worse than about +-6 points (a 95% interval at 80%: +-5.5 with 200) and cost training.
TEST_FRACTIONS, MIN_TEST_IMAGES = (0.1, 0.2), 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class BackboneCost:
    """What one backbone costs per trial here, or why it cannot run."""

    backbone: str
    image_size: int
    images_per_second: float | None
    minutes: float | None  # per trial: epochs x (train + eval images) / images per second
    error: str | None = None
    deeper_than: BackboneCost | None = None  # left out unprobed: a shallower sibling is too slow


@dataclass(frozen=True)
class FolderSummary:
    """What the scan found."""

    layout: str
    root: Path
    given_split: bool
    classes: list[str]
    counts: list[int]  # readable images per class
    n_train: int
    n_val: int
    short_side: int  # median of min(width, height) over the readable images, px
    size_range: tuple[int, int]  # smallest and largest short side, px
    bad: list[tuple[str, str]]  # (file, why) the decoding pass skips
    warnings: list[str] = field(default_factory=list)
    n_test: int = 0  # the test split's images: the folder's own, or held out (test_fraction)
    test_fraction: float = 0.0  # what the study file's [data] test_fraction says
    test_note: str = ""  # where the test split comes from, or why there is none

    @property
    def imbalance(self) -> float:
        return max(self.counts) / max(1, min(self.counts))


@dataclass(frozen=True)
class InitPlan:
    """What ``search init`` found and chose, with the reasons it prints."""

    name: str
    source: str  # the folder as the user named it, for the file's header
    folder: FolderSummary
    device: str
    wall: str
    limit_minutes: float
    image_size: int
    size_reason: str
    epochs: int
    patience: int
    batch_sizes: list[int]
    estimates: list[BackboneCost]
    backbones: list[str]
    losses: list[str]
    notes: list[str]
    probes: tuple[int, int, float] = (0, 0, 0.0)  # probes asked, measured now, seconds measuring
    trial_epochs: int = EPOCHS  # the epochs of a trial in the estimates and the per-trial limit
    sizes: list[int] = field(default_factory=list)  # searched image sizes ([] : image_size only)
    sizes_reason: str = ""
    min_resource: int = RUNG_MIN  # the lowest rung, epochs
    schedule_reason: str = ""
    refit: float = REFIT_SHARE

    @property
    def baseline_backbone(self) -> str:
        """The first trial's backbone: the cheapest kept one. Its result comes within the
        first minutes of the budget, tells whether the folder is learnable at all, and gives
        the pruner's median a first value; the sampler reaches the costlier ones after it."""
        minutes = {e.backbone: e.minutes for e in self.estimates if e.minutes is not None}
        return min(self.backbones, key=lambda b: minutes.get(b, float("inf")))


# ----------------------------------------------------------------------------- durations


def _format_duration(seconds: float) -> str:
    """600.0 -> ``10m``, 5400.0 -> ``90m``, 45.0 -> ``45s``: what the study file's wall says."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ----------------------------------------------------------------------------- the folder


def summarize_folder(scan: FolderScan, *, image_size: int) -> FolderSummary:
    """Decode ``scan`` at ``image_size`` with training's pass and split it as training will.

    Refuses (ValueError) what training would refuse, and a folder with fewer than 2 classes.
    """
    unreadable = unreadable_files(scan, image_size=image_size)
    bad = [(scan.name(i), why) for i, why in sorted(unreadable.items())]
    good = [i for i in range(len(scan.files)) if i not in unreadable]
    if not good:
        raise ValueError(_no_readable(scan, bad))
    labels = sorted({scan.labels[i] for i in good})
    if len(labels) < 2:
        raise ValueError(_one_class(scan, labels))
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfg = DataConfig(name=scan.layout, root=str(scan.root), image_size=image_size)
        data = load_data(cfg)
        pool = len(data.y_train) + (len(data.y_val) if scan.is_val is None else 0)
        given = data.splits.get("test", {}).get("count", 0)  # a test/ folder, split=test rows
        test_fraction, test_note = choose_test_split(pool, given=given)
        if test_fraction:
            del data  # split again, a test split first, as training will
            try:
                cfg = replace(cfg, test_fraction=test_fraction)
                data = load_data(cfg)
            except ValueError as exc:  # a class too small to split three ways
                why = (str(exc).splitlines() or ["?"])[0]
                test_fraction, test_note = 0.0, f"no test split: holding one out fails ({why})"
                cfg = replace(cfg, test_fraction=0.0)
                data = load_data(cfg)
        y_test = load_test(cfg)[1] if data.splits.get("test", {}).get("count") else None
    for w in seen:
        text = str(w.message)
        if not text.startswith("skipping"):  # unreadable files are listed by the summary
            caught.append(text)
    y = torch.cat([data.y_train, data.y_val, *([] if y_test is None else [y_test])])
    counts = torch.bincount(y, minlength=data.num_classes).tolist()
    sides = sorted(min(scan.sizes[i]) for i in good if scan.sizes[i] is not None)
    return FolderSummary(
        layout=scan.layout,
        root=scan.root,
        given_split=scan.is_val is not None,
        classes=list(data.class_names),
        counts=counts,
        n_train=len(data.y_train),
        n_val=len(data.y_val),
        short_side=int(median(sides)) if sides else image_size,
        size_range=(sides[0], sides[-1]) if sides else (image_size, image_size),
        bad=bad,
        warnings=caught,
        n_test=0 if y_test is None else len(y_test),
        test_fraction=test_fraction,
        test_note=test_note,
    )


def choose_test_split(pool: int, *, given: int) -> tuple[float, str]:
    """(data.test_fraction, why) for a folder whose split pool (the images a test split would
    come from) holds ``pool`` images and whose own test split ``given`` (0: none)."""
    if given:
        return 0.0, f"the folder's own test split, {given:,} images"
    for fraction in TEST_FRACTIONS:
        if pool * fraction >= MIN_TEST_IMAGES:
            return fraction, (
                f"{fraction:.0%} of the images held out, which no trial sees: "
                "`search confirm` reports accuracy on them"
            )
    return 0.0, (
        f"no test split: {pool:,} images are too few to hold out {MIN_TEST_IMAGES} "
        f"(fewer measure accuracy to worse than about +-6 points, and cost training images)"
    )


def _no_readable(scan: FolderScan, bad: list[tuple[str, str]]) -> str:
    example = f" (e.g. {bad[0][0]}: {bad[0][1]})" if bad else ""
    return (
        f"none of the {len(scan.files)} image files under {scan.root} could be read{example}; "
        "replace them with JPEG/PNG/WebP images"
    )


def _one_class(scan: FolderScan, labels: list[str]) -> str:
    what = f"one class ({labels[0]})" if labels else "no class"
    fix = {
        "folder": "add one subfolder of images per class",
        "flat": "add <label>_<id> files of another label",
        "csv": "add rows of another label to the manifest",
    }[scan.layout]
    return f"{scan.root} has {what} with readable images; a classifier needs at least 2: {fix}"


# ------------------------------------------------------------------------------ the probe


Measure = Callable[[str, int, int, int], float]


def probe_cache_path() -> Path:
    """Probe results live next to the decoded images (``$HPSEARCH_CACHE_DIR``)."""
    return cache_dir().parent / "throughput.json"


class Prober:
    """Training images/s per (backbone, size, batch), measured once per device and cached."""

    def __init__(self, *, num_classes: int, remeasure: bool = False) -> None:
        self.num_classes = num_classes
        self.device = device_label(select_device("auto"))
        self.remeasure = remeasure
        self.asked = 0
        self.measured = 0  # probes that ran now (not from the cache)
        self.seconds = 0.0  # spent measuring
        self._path = probe_cache_path()
        self._cache = self._read()
        self._fresh: set[str] = set()  # measured by this run (--remeasure measures each once)

    def images_per_second(self, backbone: str, image_size: int, batch_size: int) -> float:
        key = json.dumps(
            [self.device, torch.__version__, backbone, image_size, batch_size, self.num_classes]
        )
        self.asked += 1
        if key in self._cache and (not self.remeasure or key in self._fresh):
            return float(self._cache[key])
        cfg = TrainConfig.from_flat(
            {
                "model.backbone": backbone,
                "data.image_size": image_size,
                "data.batch_size": batch_size,
            }
        )
        start = time.perf_counter()
        got = measure_throughput(
            cfg,
            num_classes=self.num_classes,
            steps=PROBE_STEPS,
            warmup=PROBE_WARMUP,
            max_seconds=PROBE_MAX_SECONDS,
        )
        self.measured += 1
        self.seconds += time.perf_counter() - start
        self._fresh.add(key)
        self._cache[key] = got.images_per_second
        self._write()
        return got.images_per_second

    def _read(self) -> dict[str, float]:
        try:
            return dict(json.loads(self._path.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def _write(self) -> None:
        with atomic_write(self._path) as tmp:
            tmp.write_text(json.dumps(self._cache, indent=0, sort_keys=True))


def _trial_minutes(ips: float, *, n_train: int, n_val: int, epochs: int) -> float:
    """The estimate ``search run`` makes (``search.experiments.cost.trial_seconds``), plus a fixed
    allowance per trial: init decides before any trial has calibrated it."""
    seconds = trial_seconds(ips, epochs=epochs, n_train=n_train, n_val=n_val)
    return (seconds + TRIAL_OVERHEAD_S) / 60


def _estimate(
    prober: Prober, backbone: str, *, size: int, batch: int, n_train: int, n_val: int, epochs: int
) -> BackboneCost:
    try:
        ips = prober.images_per_second(backbone, size, batch)
    except (ValueError, RuntimeError) as exc:  # cannot take this size, out of memory, ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        return BackboneCost(backbone, size, None, None, error=first)
    return BackboneCost(
        backbone, size, ips, _trial_minutes(ips, n_train=n_train, n_val=n_val, epochs=epochs)
    )


# ----------------------------------------------------------------------------- the choices


def plan_study(
    root: str | Path,
    *,
    name: str | None = None,
    wall: str = DEFAULT_WALL,
    remeasure: bool = False,
    echo: Callable[[str], None] = lambda line: None,
) -> InitPlan:
    """Scan ``root``, probe this device, and choose a study that fits (see module doc)."""
    wall_seconds = parse_duration(wall)
    scan = scan_folder(root)
    name = check_name(name if name is not None else default_name(scan.layout, scan.root))
    readable = [s for s in scan.sizes if s is not None]
    if not readable:
        raise ValueError(_no_readable(scan, [(scan.name(0), "not an image PIL can read")]))
    if len(set(scan.labels)) < 2:
        raise ValueError(_one_class(scan, sorted(set(scan.labels))))
    limit = max(0.1, round(wall_seconds / 60 / TRIALS_PER_WALL, 1))
    gpu = select_device("auto").type == "cuda"
    sides = sorted(min(s) for s in readable)
    cap = max([s for s in SIZES if s <= min(median(sides), SIZES[-1])] or [SIZES[0]])
    floor = min(MIN_SIZE, cap)

    # Image size: the counts before decoding are close enough to choose it.
    n_guess = len(readable)
    if scan.is_val is not None:
        train_guess = sum(1 for s, v in zip(scan.sizes, scan.is_val, strict=True) if s and not v)
    else:
        train_guess = math.floor(n_guess * (1 - DataConfig().val_fraction))
    batches = _batch_sizes(gpu=gpu, n_train=train_guess)
    prober = Prober(num_classes=len(set(scan.labels)), remeasure=remeasure)
    echo(f"probing {prober.device} ...")
    ref_size = min(64, cap)
    ref = _estimate(
        prober,
        REFERENCE,
        size=ref_size,
        batch=batches[0],
        n_train=train_guess,
        n_val=n_guess - train_guess,
        epochs=EPOCHS,
    )
    image_size, size_reason = _choose_size(ref, cap=cap, floor=floor, limit=limit)

    folder = summarize_folder(scan, image_size=image_size)
    batches = _batch_sizes(gpu=gpu, n_train=folder.n_train)
    epochs = EPOCHS
    counts = {"n_train": folder.n_train, "n_val": folder.n_val}
    if ref.images_per_second is not None:  # the reason quotes the decoded counts, as the table
        ref = replace(ref, minutes=_trial_minutes(ref.images_per_second, **counts, epochs=epochs))
        same_size, reason = _choose_size(ref, cap=cap, floor=floor, limit=limit)
        if same_size == image_size:
            size_reason = reason
    size_reason += f"; the images' short side is ~{int(median(sides))} px"
    estimates: list[BackboneCost] = []
    for b in CANDIDATES:
        shallower = next((e for e in estimates if e.backbone == SHALLOWER.get(b)), None)
        if shallower is not None and _over(shallower, limit):
            too_slow = shallower.deeper_than or shallower
            estimates.append(BackboneCost(b, image_size, None, None, deeper_than=too_slow))
        else:
            estimates.append(
                _estimate(prober, b, size=image_size, batch=batches[0], **counts, epochs=epochs)
            )
    notes: list[str] = []
    runnable = [e for e in estimates if e.minutes is not None]
    if not runnable:  # every probe failed (unprobed ones follow a probed one)
        raise ValueError(
            f"none of the backbones {', '.join(CANDIDATES)} can train at {image_size} px here "
            f"({estimates[0].error}); check the installation of torch and timm"
        )
    fastest = min(runnable, key=lambda e: e.minutes or 0.0)
    if fastest.minutes > limit:  # nothing fits 10 epochs: fewer epochs before fewer choices
        per_epoch = max(1e-9, (fastest.minutes - TRIAL_OVERHEAD_S / 60) / epochs)
        epochs = max(MIN_EPOCHS, math.floor((limit - TRIAL_OVERHEAD_S / 60) / per_epoch))
        estimates = [
            e
            if e.images_per_second is None
            else replace(e, minutes=_trial_minutes(e.images_per_second, **counts, epochs=epochs))
            for e in estimates
        ]
        notes.append(
            f"epochs lowered from {EPOCHS} to {epochs}: even {fastest.backbone} needs "
            f"{_about(fastest.minutes)} per trial of {EPOCHS} epochs here"
        )
    kept = [e.backbone for e in estimates if e.minutes is not None and e.minutes <= limit]
    if not kept:
        kept = [fastest.backbone]
        now = next(e for e in estimates if e.backbone == fastest.backbone)
        notes.append(
            f"even {fastest.backbone} needs {_about(now.minutes or 0.0)} per trial of "
            f"{epochs} epochs here (limit {_minutes(limit)}); kept anyway: pass a longer --budget"
        )
    losses = ["ce", "focal"] if folder.imbalance >= IMBALANCE else ["ce"]
    kept_costs = [e for e in estimates if e.backbone in kept and e.minutes is not None]
    low, top, schedule_reason = _choose_schedule(
        kept_costs, epochs=epochs, wall_seconds=wall_seconds
    )
    sizes, sizes_reason = _choose_sizes(
        kept_costs, size=image_size, cap=cap, floor=floor, limit=limit
    )
    return InitPlan(
        name=name,
        source=str(root),
        folder=folder,
        device=prober.device,
        wall=_format_duration(wall_seconds),
        limit_minutes=limit,
        image_size=image_size,
        size_reason=size_reason,
        epochs=top,
        patience=_patience(top),
        batch_sizes=batches,
        estimates=estimates,
        backbones=kept,
        losses=losses,
        notes=notes,
        probes=(prober.asked, prober.measured, prober.seconds),
        trial_epochs=epochs,
        sizes=sizes,
        sizes_reason=sizes_reason,
        min_resource=low,
        schedule_reason=schedule_reason,
    )


def _pruner_table(low: int) -> dict[str, Any]:
    return {"name": "successive_halving", "min_resource": low, "reduction_factor": REDUCTION}


def _choose_schedule(
    kept: list[BackboneCost], *, epochs: int, wall_seconds: float
) -> tuple[int, int, str]:
    """(lowest rung, top rung = train.epochs, why) of the successive-halving schedule.

    A bracket starts REDUCTION^k trials at the lowest rung and carries one to the top, so it
    costs REDUCTION^k times a trial's expected epochs. The schedule is the longest of
    SCHEDULES at which BRACKETS_PER_SEARCH brackets of a typical kept configuration (the
    median cost per epoch, the lower of the middle two for an even count: of two backbones
    the faster, which the first trial runs; rungs sized for the slower would cut every trial
    of the faster short, while the slower one's trials are held to the per-trial limit by
    their expected cost under the halving; ``kept`` are estimates of ``epochs`` epochs) fit
    the search's share of the wall clock, and REFIT_TOP_RUNGS times the top rung of it fit
    the refit's share (a refit no longer than its trial is pointless, and the first trial
    always reaches the top: Optuna's halving promotes the best of fewer than REDUCTION);
    else the shortest."""
    fixed = TRIAL_OVERHEAD_S / 60
    per_epoch = {e.backbone: max(1e-9, ((e.minutes or 0.0) - fixed) / epochs) for e in kept}
    typical = sorted(per_epoch, key=per_epoch.get)[(len(per_epoch) - 1) // 2]
    search = (1 - REFIT_SHARE) * wall_seconds / 60
    room, refit = search / BRACKETS_PER_SEARCH, REFIT_SHARE * wall_seconds / 60
    tried: list[str] = []  # why each longer schedule was left out
    for low, k in SCHEDULES:
        top = low * REDUCTION**k
        bracket = REDUCTION**k * expected_epoch_share(_pruner_table(low), max_epochs=top)
        bracket_epochs = bracket * top
        minutes = bracket_epochs * per_epoch[typical]
        top_minutes = top * per_epoch[typical]
        last = (low, k) == SCHEDULES[-1]  # the shortest: taken whatever it costs
        if minutes > room and not last:
            tried.append(f"a bracket up to {top} epochs would take {_about(minutes)}")
            continue
        if REFIT_TOP_RUNGS * top_minutes > refit and not last:
            tried.append(f"{top} epochs would take {_about(top_minutes)}")
            continue
        rungs = ", ".join(map(str, bracket_rungs(_pruner_table(low), max_epochs=top)))
        why = (
            f"{rungs} and top {top} epochs: a bracket ({REDUCTION**k} trials started, one "
            f"carried to the top, ~{bracket_epochs:.0f} epochs) of {typical} takes "
            f"{_about(minutes)} here; {BRACKETS_PER_SEARCH} should fit the search's "
            f"{_minutes(search)} (the budget less the refit's {REFIT_SHARE:.0%}, which should "
            f"hold {REFIT_TOP_RUNGS}x the top rung, {_about(top_minutes)})"
        )
        if tried:
            why += f"; {tried[-1]}"
        return low, top, why
    raise AssertionError("unreachable: the last schedule is always taken")


def _choose_sizes(
    kept: list[BackboneCost], *, size: int, cap: int, floor: int, limit: float
) -> tuple[list[int], str]:
    """The image sizes the space searches (``[]``: only ``size``), and why: up to MAX_SIZES,
    the next size below ``size`` (a trial there costs its share of the pixels) and the next
    ones above, up to the images' own size, at which the cheapest kept backbone still fits a
    trial: ``size`` is where the reference backbone fits, and a cheaper one may afford the
    detail a folder needs (the issue's 32 px, chosen for resnet18, lost to 48-64 px). The
    run's cost model prices every (backbone, size) it draws, so a size too costly for a
    backbone is refused there (over_budget) and the sampler learns it."""
    options = [s for s in SIZES if floor <= s <= cap]
    if size not in options:
        return [], ""
    i = options.index(size)
    cheapest = min(kept, key=lambda e: e.minutes or 0.0)
    fixed = TRIAL_OVERHEAD_S / 60

    def at(side: int) -> float:
        return fixed + ((cheapest.minutes or 0.0) - fixed) * (side / size) ** 2

    sizes, why = [size], []
    if i > 0:
        sizes.insert(0, options[i - 1])
        why.append(f"{options[i - 1]} px costs {(options[i - 1] / size) ** 2:.0%} of {size} px")
    for side in options[i + 1 :]:
        if len(sizes) >= MAX_SIZES or at(side) > limit:
            break
        sizes.append(side)
    if sizes[-1] > size:
        why.append(
            f"{cheapest.backbone} fits a trial at {sizes[-1]} px ({_about(at(sizes[-1]))}, "
            f"limit {_minutes(limit)})"
        )
    if len(sizes) < 2:
        return [], f"{size} px only: no other size between {floor} px and the images' {cap} px"
    return sizes, (
        f"{', '.join(map(str, sizes))} px: {'; '.join(why)}; the sampler learns which the "
        "folder needs, and the first trial runs at the smallest"
    )


def _patience(epochs: int) -> int:
    """Early stopping grows with the training length: a sixth of the top rung, at least
    PATIENCE (and at most half the epochs of a short one)."""
    if epochs < 2 * PATIENCE:
        return max(1, epochs // 2)
    return max(PATIENCE, epochs // 6)


def _over(e: BackboneCost, limit: float) -> bool:
    return e.deeper_than is not None or (e.minutes is not None and e.minutes > limit)


def _batch_sizes(*, gpu: bool, n_train: int) -> list[int]:
    """Small batches win within a fixed epoch budget (seed 004) and cost a CPU little per
    image; a GPU needs larger ones to be busy. At least 4 steps per epoch."""
    options = [32, 64, 128] if gpu else [16, 32, 64]
    return [b for b in options if 4 * b <= n_train] or [max(2, n_train // 4)]


def _choose_size(ref: BackboneCost, *, cap: int, floor: int, limit: float) -> tuple[int, str]:
    """The largest size (up to the images' own) at which the reference backbone finishes a
    trial within the limit; cost grows with the pixel count."""
    options = [s for s in SIZES if floor <= s <= cap]
    if ref.minutes is None:
        size = min(64, cap)
        return size, f"{REFERENCE} could not be probed ({ref.error}); {size} px by default"

    fixed = TRIAL_OVERHEAD_S / 60

    def at(size: int) -> float:
        return fixed + (ref.minutes - fixed) * (size / ref.image_size) ** 2

    fits = [s for s in options if at(s) <= limit]
    if not fits:
        return floor, (
            f"{REFERENCE} needs {_about(at(floor))} per trial even at {floor} px here "
            f"(limit {_minutes(limit)}), so the smallest useful size"
        )
    size = max(fits)
    bigger = [s for s in options if s > size]
    why = f"{REFERENCE} {_about(at(size))} per trial at {size} px here"
    if bigger:
        why += f", {_about(at(bigger[0]))} at {bigger[0]} px (limit {_minutes(limit)})"
    else:
        why += f" (limit {_minutes(limit)})"
    return size, why


def _minutes(minutes: float) -> str:
    """Rounded so that run-to-run noise rarely changes the text: 2 significant figures."""
    if minutes < 0.1:
        return "<0.1 min"
    return f"{float(f'{minutes:.2g}'):g} min"


def _about(minutes: float) -> str:
    """An estimate: ``~2.5 min``, or ``<0.1 min``."""
    text = _minutes(minutes)
    return text if text.startswith("<") else f"~{text}"


def default_name(layout: str, root: Path) -> str:
    """The folder's name as a study name (the manifest's folder for csv)."""
    folder = root.parent if layout == "csv" else root
    slug = re.sub(r"[^a-z0-9_]+", "_", folder.name.lower()).strip("_")
    return slug or "images"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"study name {name!r} must be letters, digits, '_', '.' or '-' (e.g. my_photos)"
        )
    return name


# ---------------------------------------------------------------------------- the report


def describe(plan: InitPlan) -> list[str]:
    """What was found and chosen, and why, as the lines ``search init`` prints."""
    f = plan.folder
    split = (
        "given train/val split"
        if f.given_split
        else f"seeded {round(100 * (1 - DataConfig().val_fraction))}/"
        f"{round(100 * DataConfig().val_fraction)} split"
    )
    shown = ", ".join(f"{c} {n:,}" for c, n in zip(f.classes[:8], f.counts[:8], strict=False))
    more = f", ... ({len(f.classes) - 8} more)" if len(f.classes) > 8 else ""
    lines = [
        f"folder   {f.root} (layout {f.layout}, {split})",
        f"images   {sum(f.counts):,} in {len(f.classes)} classes: {shown}{more}",
        f"         {f.n_train:,} train / {f.n_val:,} val{_test_count(f)}; largest class / "
        f"smallest {f.imbalance:.1f}",
        f"test     {f.test_note}",
        f"sizes    short side ~{f.short_side} px (from {f.size_range[0]} to {f.size_range[1]})",
    ]
    if f.bad:
        names = "; ".join(f"{n} ({why})" for n, why in f.bad[:5])
        more_bad = f"; and {len(f.bad) - 5} more" if len(f.bad) > 5 else ""
        lines.append(f"bad      {len(f.bad)} unreadable, skipped by training: {names}{more_bad}")
    else:
        lines.append("bad      none: every image decodes")
    lines += [f"warning  {w}" for w in f.warnings]
    asked, measured, seconds = plan.probes
    if measured:
        probed = (
            f"{measured} of {asked} probes measured now in {seconds:.0f} s, cached for next time"
        )
    else:
        probed = f"{asked} probes from the cache of an earlier run (--remeasure measures again)"
    lines += [
        f"device   {plan.device}; {probed}",
        f"budget   {plan.wall} wall, at most {_minutes(plan.limit_minutes)} per trial "
        f"(1/{TRIALS_PER_WALL} of the budget)",
        f"size     {plan.image_size} px: {plan.size_reason}",
    ]
    if plan.sizes:
        lines.append(f"searched {plan.sizes_reason}")
    lines += [
        f"epochs   up to {plan.epochs} per trial, patience {plan.patience}; successive halving "
        f"keeps 1 in {REDUCTION} at each rung",
        f"rungs    {plan.schedule_reason}",
        f"refit    the last {plan.refit:.0%} of the budget trains the best configuration longer",
        f"backbones at {plan.image_size} px, batch {plan.batch_sizes[0]}, "
        f"{plan.trial_epochs} epochs, from scratch:",
    ]
    for e in plan.estimates:
        if e.deeper_than is not None:
            d = e.deeper_than
            lines.append(
                f"  {e.backbone:<16} left out, not probed: deeper than {d.backbone} "
                f"({_about(d.minutes or 0.0)} per trial, limit {_minutes(plan.limit_minutes)})"
            )
        elif e.minutes is None:
            lines.append(f"  {e.backbone:<16} left out: fails at {e.image_size} px ({e.error})")
        elif e.backbone in plan.backbones:
            lines.append(
                f"  {e.backbone:<16} kept: {_about(e.minutes)} per trial "
                f"({e.images_per_second:,.0f} images/s)"
            )
        else:
            lines.append(
                f"  {e.backbone:<16} left out: {_about(e.minutes)} per trial here at "
                f"{e.image_size} px (limit {_minutes(plan.limit_minutes)})"
            )
    if plan.losses != ["ce"]:
        lines.append(
            f"loss     ce or focal: the classes are imbalanced ({f.imbalance:.1f}:1), and "
            "accuracy flatters the largest class"
        )
    lines += [f"note     {n}" for n in plan.notes]
    return lines


# ------------------------------------------------------------------------------- the file


def render_study(plan: InitPlan) -> str:
    """The study file: TOML with comments that say why each choice was made."""
    f = plan.folder
    layout_note = {
        "folder": "one subfolder per class",
        "flat": "files named <label>_<id>",
        "csv": "a manifest path,label[,split]",
    }[f.layout]
    kept = [e for e in plan.estimates if e.backbone in plan.backbones]
    out = [e for e in plan.estimates if e.backbone not in plan.backbones]
    middle_batch = plan.batch_sizes[len(plan.batch_sizes) // 2]
    lines = [
        f"# Written by `search init {plan.source}` for this folder and this machine "
        f"({plan.device}).",
        f"# {sum(f.counts):,} images in {len(f.classes)} classes ({f.n_train:,} train / "
        f"{f.n_val:,} val{_test_count(f)}), short side ~{f.short_side} px.",
        f"# `search space --study {plan.name}` shows the space, "
        f"`search run --study {plan.name}` runs it.",
        "# Edit freely; `search init --force` writes it again.",
        _kv(
            "description",
            f"{plan.name}: {len(f.classes)} classes at {plan.image_size} px, from scratch",
        ),
        "",
        "[data]",
        _kv("name", f.layout, layout_note),
        _kv("root", str(f.root)),
        _kv(
            "image_size",
            plan.image_size,
            f"largest size at which {REFERENCE} fits max_trial_minutes here",
        ),
        _kv("augment", "light", "random crops and flips on the training device"),
        *_test_lines(f),
        "",
        _kv("[params]", None, "the whole search space, one entry per config key"),
        "# Backbones that finish a trial within max_trial_minutes here, from scratch:",
        f"#   {', '.join(_coarse(e) for e in kept)}",
    ]
    if out:
        lines.append(f"# left out: {', '.join(_coarse(e) for e in out)}")
    if plan.sizes:
        lines += [
            *_wrap_comment(f"Image sizes {plan.sizes_reason}.", indent="# "),
            _kv('"data.image_size"', plan.sizes, "cost grows with the pixels; priced per trial"),
        ]
    lines += [
        _kv('"model.backbone"', plan.backbones),
        _kv('"data.batch_size"', plan.batch_sizes),
        _kv('"optim.name"', ["adam", "sgd"]),
        '"optim.lr" = { low = 0.0001, high = 0.01, log = true }',
        '"optim.momentum" = { low = 0.8, high = 0.99, when = { "optim.name" = ["sgd"] } }',
        '"model.dropout" = { low = 0.0, high = 0.5 }',
    ]
    if plan.losses != ["ce"]:
        lines.append(
            _kv('"loss.name"', plan.losses, f"classes {f.imbalance:.1f}:1; focal weighs hard ones")
        )
    lines += [
        "",
        "[fixed]",
        _kv('"train.seed"', 0, "the same initial weights in every trial: fair comparisons"),
        '# "model.pretrained" = "imagenet"   # once the weights are in the Hugging Face cache',
        "",
        "[budget]",
        _kv("epochs", plan.epochs, "per trial at most: the top rung of [pruner]"),
        _kv("patience", plan.patience, "epochs without a better val acc before a trial stops"),
        _kv(
            "max_trial_minutes",
            plan.limit_minutes,
            "a configuration expected to take longer is not trained",
        ),
        _kv("wall", plan.wall, "`search run` without --budget stops after this"),
        f"# The last {plan.refit:.0%} of the wall clock trains the best trial's configuration "
        f"again, up to {REFIT_MAX_EPOCHS_FACTOR}x its",
        "# epochs with a longer patience, as a trial of its own (user attribute refit_of): the",
        "# search's trials stop at rungs, and the winner deserves a run to its plateau.",
        "# `search best`, `predict` and `confirm` use that refit. 0 turns it off.",
        _kv("refit", plan.refit),
        "",
        "[sampler]",
        _kv("name", "tpe"),
        _kv("seed", 0),
        _kv("n_startup_trials", 5, "few trials fit the budget: model-based draws start early"),
        "",
        "# Multi-fidelity over epochs: a trial is judged after min_resource epochs, then after",
        f"# {REDUCTION}x, {REDUCTION**2}x, ...; only the best 1 in {REDUCTION} of those judged "
        "at a rung trains on, so few",
        "# configurations pay for the top rung, and many are tried. The budget sets the rungs:",
        *_wrap_comment(f"rungs at {plan.schedule_reason}"),
        "[pruner]",
        _kv("name", "successive_halving"),
        _kv("min_resource", plan.min_resource, "epochs before the first judgement"),
        _kv("reduction_factor", REDUCTION),
        "",
        _kv("[[enqueue]]", None, "a known-good first trial, the cheapest kept backbone"),
        _kv('"model.backbone"', plan.baseline_backbone),
        _kv('"data.batch_size"', middle_batch),
        _kv('"optim.name"', "adam"),
        _kv('"optim.lr"', 0.001),
        _kv('"model.dropout"', 0.2),
    ]
    if plan.sizes:  # low resolution first: the quickest first result
        lines.append(_kv('"data.image_size"', plan.sizes[0]))
    return "\n".join(lines) + "\n"


def _test_count(f: FolderSummary) -> str:
    return f" / {f.n_test:,} test" if f.n_test else ""


def _test_lines(f: FolderSummary) -> list[str]:
    """The [data] lines on the test split: test_fraction and why, or why there is none."""
    rule = (
        f"search init holds out {TEST_FRACTIONS[0]:.0%} when that is at least "
        f"{MIN_TEST_IMAGES} images, else {TEST_FRACTIONS[1]:.0%} when that is, else none."
    )
    if f.test_fraction:
        return [
            *_wrap_comment(
                "A test split that no search trial sees: the best trial's validation accuracy "
                "is optimistic (it was chosen by it), and `search confirm` reports accuracy on "
                f"these images instead. {rule} Change it before the first run only: the split "
                "is part of the study.",
                indent="# ",
            ),
            _kv("test_fraction", f.test_fraction, f"{f.n_test:,} images"),
        ]
    if f.n_test:
        return [f"# The folder's own test split ({f.n_test:,} images) is `search confirm`'s."]
    return _wrap_comment(
        f"{f.test_note[0].upper()}{f.test_note[1:]}. {rule} `search confirm` needs one: add a "
        "labelled test/ folder, or test_fraction = 0.2 here, before the first run.",
        indent="# ",
    )


def _wrap_comment(text: str, width: int = 96, indent: str = "#   ") -> list[str]:
    """``text`` as comment lines of at most ``width`` characters."""
    return [f"{indent}{line}" for line in textwrap.wrap(text, width - len(indent))]


def _kv(key: str, value: Any, comment: str = "") -> str:
    """``key = value`` (or a bare header when value is None), comments in one column."""
    text = key if value is None else f"{key} = {_toml(value)}"
    return f"{text:<30} # {comment}" if comment else text


def _coarse(e: BackboneCost) -> str:
    """Whole minutes in the file, so that probe noise rarely changes it."""
    if e.deeper_than is not None:
        return f"{e.backbone} (deeper than {e.deeper_than.backbone})"
    if e.minutes is None:
        return f"{e.backbone} fails here"
    return f"{e.backbone} <1 min" if e.minutes < 1 else f"{e.backbone} ~{round(e.minutes):d} min"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


# ------------------------------------------------------------------------------ the command


def init_study(
    root: str | Path,
    *,
    name: str | None = None,
    out: str | Path | None = None,
    wall: str = DEFAULT_WALL,
    force: bool = False,
    remeasure: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    """Plan, print and write the study file; refuses to overwrite ``out`` without ``force``."""
    parse_duration(wall)
    if name is None:
        name = default_name(*detect_layout(root))
    check_name(name)
    path = Path(out) if out is not None else Path("studies") / f"{name}.toml"
    _check_out(path, force=force)  # before the scan and the probes: refuse in a moment
    plan = plan_study(root, name=name, wall=wall, remeasure=remeasure, echo=echo)
    for line in describe(plan):
        echo(line)
    text = render_study(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    echo(f"wrote    {path}")
    echo(
        f"next     search space --study {plan.name}    then    "
        f"search run --study {plan.name} --budget {plan.wall}"
    )
    return path


def _check_out(path: Path, *, force: bool) -> None:
    if path.suffix != ".toml":
        raise ValueError(f"--out {path} must end in .toml (study files are TOML)")
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; name the study file, e.g. {path}/mine.toml")
    if path.exists() and not force:
        raise ValueError(f"{path} already exists; pass --force to overwrite it, or --name NEW")
