"""search.study.splits: the split record a study keeps, and the refusals when data changed."""

from __future__ import annotations

import optuna
import pytest

from search.study.splits import ATTR, check_splits, record_splits, require_test
from trainer import DataConfig
from trainer.data import split_record

PLAIN = DataConfig(name="digits", image_size=8)
WITH_TEST = DataConfig(name="digits", image_size=8, test_fraction=0.2)


def test_the_first_record_is_kept_and_returned():
    study = optuna.create_study()
    first = record_splits(study, PLAIN)
    assert first == split_record(PLAIN) == study.user_attrs[ATTR]
    assert set(first) == {"train", "val"}
    # a later run with other data does not overwrite it: changes are judged against it
    assert record_splits(study, WITH_TEST) == first
    assert study.user_attrs[ATTR] == first


def test_an_unchanged_split_passes_and_gives_the_current_record():
    recorded = split_record(WITH_TEST)
    assert check_splits(recorded, WITH_TEST, study="s") == recorded
    assert check_splits(recorded, WITH_TEST, study="s", need_test=True) == recorded
    assert check_splits(None, PLAIN, study="s") == split_record(PLAIN)  # nothing to compare


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_changed_split_is_named_with_both_records_and_the_fix(split):
    recorded = split_record(WITH_TEST)
    recorded[split] = {**recorded[split], "hash": "0123456789abcdef"}
    now = split_record(WITH_TEST)[split]
    with pytest.raises(ValueError) as info:
        check_splits(recorded, WITH_TEST, study="s")
    assert str(info.value) == (
        f"the {split} split of study 's' changed since the search: it had "
        f"{recorded[split]['count']} images (hash 0123456789abcdef), now {now['count']} images "
        f"(hash {now['hash']}); restore the data as it was (or pass --data with the original "
        "folder), or run the search again as a new study"
    )


def test_a_changed_count_alone_is_a_change():
    recorded = split_record(WITH_TEST)
    recorded["val"] = {**recorded["val"], "count": recorded["val"]["count"] + 1}
    with pytest.raises(ValueError, match="the val split of study 's' changed"):
        check_splits(recorded, WITH_TEST, study="s")


def test_a_test_split_that_appeared_is_a_change():
    recorded = split_record(WITH_TEST)
    del recorded["test"]  # train and val as now, no test split then
    with pytest.raises(ValueError, match=r"the test split .* it had none, now \d+ images"):
        check_splits(recorded, WITH_TEST, study="s")


def test_a_test_split_that_went_is_a_change():
    recorded = {**split_record(PLAIN), "test": {"count": 5, "hash": "0123456789abcdef"}}
    with pytest.raises(ValueError, match=r"it had 5 images \(hash 0123456789abcdef\), now none;"):
        check_splits(recorded, PLAIN, study="s")


NO_TEST = (
    "study 's' has no test split; set data.test_fraction (e.g. 0.2) in the study file's [data] "
    "(or add a labeled test/ folder, or split=test manifest rows) and run the search as a new "
    "study"
)


def test_a_test_split_is_required_when_asked():
    for recorded in (split_record(PLAIN), None):  # none recorded (an old study), none now
        with pytest.raises(ValueError) as info:
            check_splits(recorded, PLAIN, study="s", need_test=True)
        assert str(info.value) == NO_TEST
    require_test(None, study="s")  # a study older than records: nothing to hold against it
    require_test(split_record(WITH_TEST), study="s")


def test_a_search_without_a_test_split_is_refused_even_if_the_data_has_one_now():
    recorded = split_record(WITH_TEST)
    del recorded["test"]  # searched before the test split was added
    with pytest.raises(ValueError) as info:
        check_splits(recorded, WITH_TEST, study="s", need_test=True)
    assert str(info.value) == NO_TEST  # the fix, not a "changed" message
