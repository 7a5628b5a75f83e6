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
from motfm_core.model.masks import MASK_SOURCES
from motfm_core.model.solvers import METHODS


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


def _literal_fields():
    """(section, config class, field, choices) of every field typed with a Literal, read from the dataclasses."""
    import dataclasses
    import typing

    from motfm_core import config

    out = []
    for section, cls in (("data", config.DataConfig), ("model", config.ModelConfig), ("train", config.TrainConfig),
                         ("sample", config.SampleConfig), ("eval", config.EvalConfig),
                         ("autoencoder", config.AutoencoderConfig), ("enhance", config.EnhanceConfig)):
        hints = typing.get_type_hints(cls)  # in the module that declares it
        out += [(section, cls, f.name, get_args(hints[f.name])) for f in dataclasses.fields(cls)
                if typing.get_origin(hints[f.name]) is typing.Literal]
    return out


def test_every_choice_is_declared_once_as_a_type_and_checked_from_it():
    """The choices live in the fields' Literal types; validate() refuses anything else with one message shape,
    and from_dict (what --set and the flow's overrides go through) applies the same check."""
    from motfm_core.config import from_dict

    fields = _literal_fields()
    assert {f"{s}.{n}" for s, _, n, _ in fields} >= {
        "data.spatial_dims", "model.size", "model.mask_conditioning", "model.prediction", "model.space",
        "train.time_sampling", "train.coupling", "sample.solver", "sample.compression", "sample.precision",
        "sample.mask_source", "enhance.task"}
    for section, cls, name, _ in fields:
        with pytest.raises(ValueError, match=rf"^{section}\.{name} must be one of \[.*\], got 'bogus'$"):
            from_dict(cls, {name: "bogus"}, section)


def test_the_flow_parameters_default_to_the_config_defaults():
    """Compared, not copied: each named flow parameter's default is its config field's (mask conditioning is the
    one the flow sets itself: a run conditions on masks when the dataset has them)."""
    import inspect

    from flows.arguments import FLOW_MASK_CONDITIONING
    from flows.synth_and_eval import build_config, synth_and_eval
    from motfm_core.config import DataConfig, EvalConfig

    defaults = {k: p.default for k, p in inspect.signature(synth_and_eval.fn).parameters.items()}
    checked = {k: p.default for k, p in inspect.signature(build_config).parameters.items()}  # `motfm run`'s check
    assert all(tuple(checked[k]) == tuple(v) if k == "seeds" else checked[k] == v
               for k, v in defaults.items() if k in checked and k != "overrides")
    assert defaults["dataset"] == DataConfig().source and defaults["image_size"] == DataConfig().image_size
    assert defaults["model_size"] == ModelConfig().size and defaults["solver"] == SampleConfig().solver
    assert defaults["nfe"] == SampleConfig().nfe and defaults["samples_per_class"] == SampleConfig().samples_per_class
    assert tuple(defaults["seeds"]) == EvalConfig().seeds and defaults["mask_conditioning"] == FLOW_MASK_CONDITIONING


def test_settings_a_later_stage_would_refuse_are_refused_at_load():
    """A flow-matching run with a diffusion sampler was refused in the sampling stage, after the whole training;
    spatial_dims=3.0 passed the choice check (3.0 == 3) and failed later as a float."""
    from motfm_core.config import PipelineConfig

    with pytest.raises(ValueError, match=r"sample.solver='ddim' cannot sample a model with model.prediction="
                                         r"'velocity'; use a flow-matching solver"):
        PipelineConfig.from_overrides({"sample": {"solver": "ddim"}})
    with pytest.raises(ValueError, match=r"sample.solver='euler' cannot sample .*'epsilon'; use sample.solver "
                                         r"'ddpm' or 'ddim'"):
        PipelineConfig.from_overrides({"model": {"prediction": "epsilon"}})
    assert PipelineConfig.from_overrides({"model": {"prediction": "epsilon"}, "sample": {"solver": "ddim"}})
    with pytest.raises(ValueError, match=r"data.spatial_dims must be one of \[2, 3\], got 3.0 \(float\)"):
        PipelineConfig.from_overrides({"data": {"spatial_dims": 3.0}})


def test_a_typo_gets_did_you_mean():
    """`train.step` listed the valid keys but did not say which one was meant."""
    from motfm_core.config import PipelineConfig
    from motfm_core.errors import BadInput

    with pytest.raises(BadInput, match=r"\['step'\] \(did you mean `train\.steps`\?\)"):
        PipelineConfig.from_overrides({"train": {"step": 5}})
    with pytest.raises(BadInput, match=r"\(did you mean `sample`\?\)"):
        PipelineConfig.from_overrides({"sampel": {"nfe": 5}})
    with pytest.raises(BadInput) as nothing_close:
        PipelineConfig.from_overrides({"train": {"zzz": 5}})
    assert "did you mean" not in str(nothing_close.value)
