"""The flow parameters' choice types agree with what the code accepts (a choice the UI offers must run, and
everything that runs must be offered)."""

from typing import get_args

import pytest

from motfm_core.config import (
    MODEL_SIZES,
    EnhanceConfig,
    EnhanceTask,
    MaskConditioning,
    MaskSource,
    ModelConfig,
    ModelSize,
    SampleConfig,
    Solver,
)
from motfm_core.masks import MASK_SOURCES
from motfm_core.solvers import METHODS


def test_choice_types_match_the_code():
    assert set(get_args(Solver)) == {*METHODS, "ddpm", "ddim"}
    assert set(get_args(ModelSize)) == set(MODEL_SIZES)
    assert set(get_args(MaskSource)) == {"auto", *MASK_SOURCES}
    for solver in get_args(Solver):
        SampleConfig(solver=solver).validate()
    for source in get_args(MaskSource):
        SampleConfig(mask_source=source).validate()
    for how in get_args(MaskConditioning):
        if how != "auto":  # "auto" is resolved from the data before a network is built
            ModelConfig(mask_conditioning=how, mask_classes=0 if how == "none" else 4).validate()
    for task in get_args(EnhanceTask):
        EnhanceConfig(task=task).validate()
    with pytest.raises(ValueError):
        SampleConfig(solver="magic").validate()
    with pytest.raises(ValueError):
        EnhanceConfig(task="deblur").validate()
