"""Read-only views of a study: the best trial, the study list, the end-of-run summary."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from search.store import Storage
from search.study.refit import best_trial, refit_source
from search.study.studyfile import list_study_files


def best_record(study: optuna.Study) -> dict[str, Any]:
    """The study's best trial (``search.study.refit.best_trial``: the refit of the best search
    trial once one completed) and what the tables need of it."""
    best = best_trial(study)  # ValueError: no complete trial yet
    attrs = best.user_attrs
    source = refit_source(best)
    refit = None
    if source is not None:
        searched = next((t for t in study.get_trials(deepcopy=False) if t.number == source), None)
        refit = {"trial": source, "value": searched.value if searched is not None else None}
    return {
        "study": study.study_name,
        "trial": best.number,
        "refit_of": refit,  # the search trial it trained longer, and that trial's value
        "value": best.value,
        "metric": (study.metric_names or ["value"])[0],
        "params": best.params,
        "config": attrs.get("config", {}),
        "best_epoch": attrs.get("best_epoch"),
        "epochs_run": attrs.get("epochs_run"),
        "max_train_acc": attrs.get("max_train_acc"),
        "train_seconds": attrs.get("train_seconds"),
        "param_count": attrs.get("param_count"),
        "trainable_param_count": attrs.get("trainable_param_count"),
        "checkpoint": attrs.get("checkpoint"),
        "trials": _state_counts(study),
    }


def _state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state; draws a budget refused before training (FAIL ``no_time``: never run,
    neither good nor bad) are counted apart as ``not run``, not as failures."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "fail" and t.user_attrs.get("status") == "no_time":
            state = "not run"
        counts[state] = counts.get(state, 0) + 1
    return counts


def print_best(study: optuna.Study, storage: Storage | str | None = None) -> None:
    """The best trial of ``study`` (``storage``, which callers pass along, is not needed)."""
    rec = best_record(study)
    print(f"study      {rec['study']}  ({_fmt_counts(rec['trials'])})")
    print(f"best       trial {rec['trial']}: {rec['metric']} = {rec['value']:.4f}")
    refit = rec["refit_of"]
    if refit is not None:
        searched = "" if refit["value"] is None else f" ({rec['metric']} {refit['value']:.4f})"
        print(
            f"refit of   trial {refit['trial']}{searched}: its configuration trained longer; "
            "predict, evaluate and confirm use it"
        )
    print(
        f"epochs     best {rec['best_epoch']} of {rec['epochs_run']}, "
        f"{(rec['train_seconds'] or 0):.1f}s training"
    )
    if rec["param_count"]:
        from search.report.tables import fmt_param_count

        print(f"model      {fmt_param_count(rec['param_count'], rec['trainable_param_count'])}")
    width = max((len(k) for k in rec["params"]), default=0)
    for key, value in rec["params"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    if rec["checkpoint"]:
        print(f"checkpoint {rec['checkpoint']}")


def print_summary(study: optuna.Study, storage: Storage | str) -> None:
    """The best trial and how to browse ``study`` in ``storage`` (a ``Storage`` or its URL)."""
    print()
    try:
        print_best(study)
    except ValueError as exc:
        print(str(exc))
    print()
    print("browse it:  " + Storage.open(storage).dashboard_command())
    print(f"      or:  search dashboard --study {study.study_name}")


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def print_list(storage: Storage | str | None) -> None:
    """The study files, then the studies in ``storage`` (a ``Storage``, or the URL
    ``--storage``, resolved here once)."""
    from search.study.studyfile import load_study

    rows: list[tuple[str, str, str, tuple[str, ...]]] = []  # name, space, description, profiles
    for name in list_study_files():
        try:
            spec = load_study(name)
        except (ValueError, TypeError) as exc:
            rows.append((name, "", f"(invalid: {exc})", ()))
            continue
        desc = spec.description.splitlines()[0] if spec.description else ""
        rows.append((name, f"space={spec.search_space.name}", desc, spec.profiles))
    w_name = max((len(r[0]) for r in rows), default=0)
    w_space = max((len(r[1]) for r in rows), default=0)
    print("study files:")
    for name, space, desc, profiles in rows:
        print(f"  {name:<{w_name}}  {space:<{w_space}}  {desc}".rstrip())
        if profiles:
            pad = " " * (w_name + w_space + 4)
            print(f"  {pad}profiles: {', '.join(profiles)} (--profile NAME)")
    store = Storage.open(storage)
    print(f"studies in {store.masked}:")
    if not store.exists:
        print("  (none yet)")
        return
    optuna.logging.set_verbosity(logging.WARNING)
    summaries = optuna.get_all_study_summaries(store.rdb, include_best_trial=False)
    if not summaries:
        print("  (none yet)")
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=store.rdb)
        try:  # ours: the best search trial, or its refit (Optuna's ranks refits by value)
            top = best_trial(study)
        except ValueError:
            best = "no complete trial"
        else:
            source = refit_source(top)
            of = f" (trial {top.number}, refit of {source})" if source is not None else ""
            best = f"best {top.value:.4f}{of}"
        print(f"  {s.study_name:<18} {s.n_trials:>4} trials  {best}")


__all__ = ["best_record", "print_best", "print_list", "print_summary"]


def print_dry_run(plan, drawn: list[dict[str, Any]]) -> None:
    """What ``search run --dry-run`` shows: the first configurations, nothing trained."""
    print(
        f"dry run of study {plan.spec.name!r} (space {plan.space.name}): the first "
        f"{len(drawn)} configurations a new study would train; nothing was trained or written"
    )
    for i, params in enumerate(drawn):
        print(f"  trial {i}:")
        for key, value in params.items():
            print(
                f"    {key:<22} {value:.4g}"
                if isinstance(value, float)
                else f"    {key:<22} {value}"
            )
