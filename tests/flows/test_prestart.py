"""Every refusal a later stage would make is made by the pre-start check (`flows.run.check_before_start`), before
Prefect starts and before any work: each case below once failed only in the stage named beside it."""

import time

import pytest

from flows.run import check_before_start
from motfm_core.errors import BadInput

CASES = {  # name: (overrides, enhance tasks, words the refusal must hold); where it used to fail
    "flow matching with ddpm": ({"sample": {"solver": "ddpm"}}, [], "model.prediction"),  # sampling
    "flow matching with ddim": ({"sample": {"solver": "ddim"}}, [], "model.prediction"),  # sampling
    "ddpm at 10 steps": ({"model": {"prediction": "epsilon"}, "sample": {"solver": "ddpm", "nfe": 10}}, [],
                         "sample.nfe=1000"),  # sampling
    "ddim beyond its steps": ({"model": {"prediction": "epsilon"}, "sample": {"solver": "ddim", "nfe": 2000}}, [],
                              "at most 1000"),  # sampling
    "ddpm arms beyond its steps": ({"eval": {"ddpm_arms": [5000]}}, [], "eval.ddpm_arms"),  # baseline sampling
    "ddpm arms of a ddpm run": ({"model": {"prediction": "epsilon"}, "sample": {"solver": "ddim"},
                                 "eval": {"ddpm_arms": [10]}}, [], "eval.ddpm_arms"),  # evaluation
    "reflow of a ddpm": ({"model": {"prediction": "epsilon"}, "sample": {"solver": "ddim"},
                          "train": {"reflow_from": "teacher.pt"}}, [], "train.reflow_from"),  # training
    "mask source without masks": ({"model": {"mask_conditioning": "none"}, "sample": {"mask_source": "train"}}, [],
                                  "sample.mask_source"),  # sampling
    "enhancing volumes": ({"data": {"spatial_dims": 3, "image_size": 16, "depth": 8}}, ["denoise"],
                          "2D images only"),  # enhancement, after training
    "a scheduler nobody allowed": ({"sample": {"scheduler": "tcp://10.0.0.1:8786"}}, [],
                                   "MOTFM_DASK_SCHEDULER"),  # sampling
    "3D demo blocks too large": ({"data": {"spatial_dims": 3, "image_size": 128, "depth": 128}}, [],
                                 "brain-mri 3D"),  # ingest
    "a float for an int": ({"data": {"spatial_dims": 3.0}}, [], "data.spatial_dims"),  # the network's build
    "latent with controlnet": ({"model": {"space": "latent", "mask_conditioning": "controlnet"},
                                "data": {"image_size": 32}}, [], "controlnet"),  # latent training
    "devices not dividing the batch": ({"train": {"devices": 3, "batch_size": 8}}, [], "train.devices"),  # training
    "downsample not dividing": ({"eval": {"downsample": 5}}, [], "eval.downsample"),  # evaluation
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_later_stages_refusal_is_made_before_start(name, tmp_path):
    overrides, enhance, words = CASES[name]
    t0 = time.perf_counter()
    with pytest.raises(BadInput, match=words.replace(".", r"\.").replace("(", r"\(")):
        check_before_start(enhance, overrides, tmp_path / "run")
    assert time.perf_counter() - t0 < 30  # no work: settings and cheap reads only


def test_mask_settings_on_a_source_without_masks(tmp_path):
    """A MedMNIST file or a labels.csv without a mask column: a mask-conditioned run was refused at training."""
    npz = tmp_path / "set.npz"
    npz.write_bytes(b"")
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "labels.csv").write_text("filename,label\na.png,x\n")
    for source in (str(npz), str(folder)):
        with pytest.raises(BadInput, match="needs a dataset with masks"):
            check_before_start([], {"data": {"source": source}, "model": {"mask_conditioning": "concat"}})
        with pytest.raises(BadInput, match="needs a dataset with masks"):
            check_before_start([], {"data": {"source": source}, "sample": {"mask_source": "deformed"}})
