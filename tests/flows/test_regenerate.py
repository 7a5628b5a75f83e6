"""How a scheduled regeneration merges the saved run config, the overrides and the named sampling parameters."""

import pytest

from flows.regenerate import regeneration_config

SAVED = {"sample": {"seed": 0, "nfe": 10, "solver": "euler"}, "train": {"steps": 50}}
UNSET = {"seed": None, "samples_per_class": None, "solver": None, "nfe": None}


def schedule():
    return 1234


def test_the_overrides_seed_is_used_not_replaced_by_the_schedules():
    c = regeneration_config(SAVED, {"sample": {"seed": 7}}, UNSET, schedule)
    assert c["sample"]["seed"] == 7  # it was silently replaced by the schedule's seed
    assert regeneration_config(SAVED, None, UNSET, schedule)["sample"]["seed"] == 1234
    assert regeneration_config(SAVED, None, {**UNSET, "seed": 9}, schedule)["sample"]["seed"] == 9
    assert SAVED["sample"]["seed"] == 0  # the saved config is not modified


def test_a_named_parameter_contradicting_the_overrides_is_refused():
    with pytest.raises(ValueError, match=r"seed=9 contradicts overrides\['sample'\]\['seed'\]=7"):
        regeneration_config(SAVED, {"sample": {"seed": 7}}, {**UNSET, "seed": 9}, schedule)
    with pytest.raises(ValueError, match=r"nfe=4 contradicts overrides\['sample'\]\['nfe'\]=2"):
        regeneration_config(SAVED, {"sample": {"nfe": 2}}, {**UNSET, "nfe": 4}, schedule)
    c = regeneration_config(SAVED, {"sample": {"nfe": 4}, "train": {"steps": 80}}, {**UNSET, "nfe": 4}, schedule)
    assert c["sample"]["nfe"] == 4 and c["train"]["steps"] == 80
