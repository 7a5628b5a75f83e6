"""End to end through Prefect's test harness (a temporary local API) on tiny phantom data."""

import json

import numpy as np
import pytest
import zarr
from prefect.exceptions import ParameterTypeError
from prefect.testing.utilities import prefect_test_harness

from flows.synth_and_eval import synth_and_eval
from motfm_core.evaluation.report import read_report
from tests.conftest import TINY_MODEL

TINY = dict(dataset="phantom:12", image_size=16, train_steps=20, nfe=2, samples_per_class=5, seeds=[0, 1, 2],
            overrides={"model": dict(TINY_MODEL), "train": {"batch_size": 8, "warmup_steps": 5, "checkpoint_every": 10},
                       "sample": {"shard_size": 4},
                       "eval": {"steps": 15, "channels": [8, 16], "ratios": [0.5, 1.0], "real_fractions": [0.5],
                                "seg_steps": 10, "seg_channels": [8, 16], "nfe_curve": [1, 2], "nfe_curve_samples": 2}})


def _progress_artifacts() -> list:
    """Every progress artifact the test server holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_end_to_end_and_rerun_is_idempotent(harness, tmp_path):
    # conditioning masks copied from the training set (`train`; the other sources: the mask-conditioned test)
    params = {**TINY, "overrides": {**TINY["overrides"], "sample": {"shard_size": 4, "mask_source": "train"}}}
    report_md = synth_and_eval(run_name="t", output_root=str(tmp_path), **params)
    run = tmp_path / "t"
    assert (run / "synthetic" / "latest").resolve() == (run / "synthetic" / "v0001.zarr").resolve()
    syn = zarr.open_group(str(run / "synthetic" / "latest"), mode="r")
    assert syn["images"].shape == (15, 1, 16, 16) and syn["images"].shards == (4, 1, 16, 16)
    imgs = syn["images"][:]
    assert np.isfinite(imgs).all() and imgs.min() >= 0 and imgs.max() <= 1
    assert np.bincount(syn["labels"][:]).tolist() == [5, 5, 5]
    assert len(set(syn["seed"][:].tolist())) == 15
    assert syn.attrs["nfe"] == 2 and syn.attrs["solver"] == "euler" and len(syn.attrs["checkpoint_sha256"]) == 64
    assert sorted(name for name, _ in syn["shards"].groups()) == ["00000", "00001", "00002", "00003"]
    from motfm_core.data import load_split

    train, src = load_split(str(run / "dataset.zarr"), "train"), syn["mask_source"][:]
    assert syn.attrs["mask_source"] == "train" and (src >= 0).all()
    assert np.array_equal(syn["masks"][:], train["masks"][src])  # each mask a training mask of the same class
    assert np.array_equal(train["labels"][src], syn["labels"][:])

    report = json.loads((run / "report.json").read_text())
    assert report["sampling"]["nfe"] == 2 and report["sampling"]["num_samples"] == 15
    assert report["training"]["steps"] == 20 and report["schema_version"] == 2
    typed = read_report(run / "report.json")  # the file reads back into the typed report, section by section
    assert json.dumps(typed.to_json()) == json.dumps(report)
    assert typed.evaluation.augmentation.sizes.synthetic_total == 15
    ev = report["evaluation"]
    assert set(ev["per_seed"]["real"]) == {"0", "1", "2"}
    for metric in ("accuracy", "macro_f1", "auroc"):
        per_seed = [ev["per_seed"]["real+synthetic"][s][metric] - ev["per_seed"]["real"][s][metric]
                    for s in ("0", "1", "2")]
        assert ev["gain"][metric]["mean"] == pytest.approx(np.mean(per_seed))
    md = (run / "report.md").read_text()
    assert "Verdict" in md and "| real+synthetic |" in md and (run / "samples.png").stat().st_size > 1000
    assert report_md == str(run / "report.md")
    assert "![training loss](training.png)" in md and (run / "training.png").stat().st_size > 1000
    # a progress bar on the run page for each long stage, full at the end
    bars = _progress_artifacts()
    for stage in ("training 20 steps", "sampling: 4 shard(s)", "evaluation: 3 seed(s)"):
        assert any(a.description.startswith(stage) and float(a.data) == 100.0 for a in bars), (stage, bars)

    # a re-run reuses the data, the model and every shard
    before = (run / "checkpoints" / "model.pt").stat().st_mtime_ns
    shard_file = next((run / "synthetic" / "v0001.zarr" / "images" / "c").rglob("*"))
    shard_mtime = shard_file.stat().st_mtime_ns
    synth_and_eval(run_name="t", output_root=str(tmp_path), **params)
    assert (run / "checkpoints" / "model.pt").stat().st_mtime_ns == before
    assert shard_file.stat().st_mtime_ns == shard_mtime
    assert not (run / "synthetic" / "v0002.zarr").exists()

    # scheduled regeneration (other sampling parameters: a new seed): a new version from the same checkpoint,
    # `latest` moved to it, the old version untouched, then evaluation
    from flows.regenerate import regenerate_synthetic

    regenerate_synthetic(run_name="t", output_root=str(tmp_path), seed=77)
    v2 = zarr.open_group(str(run / "synthetic" / "v0002.zarr"), mode="r")
    assert (run / "synthetic" / "latest").resolve().name == "v0002.zarr"
    assert v2.attrs["sample_config"]["seed"] == 77 and v2.attrs["nfe"] == 2  # else the last run's settings
    v1 = zarr.open_group(str(run / "synthetic" / "v0001.zarr"), mode="r")
    assert not set(v2["seed"][:].tolist()) & set(v1["seed"][:].tolist())
    assert shard_file.stat().st_mtime_ns == shard_mtime  # v0001 untouched
    assert json.loads((run / "report.json").read_text())["sampling"]["store"].endswith("v0002.zarr")
    # each version keeps its own report; the top one is the latest and names its version (regeneration replaced
    # report.md, which did not say which version it evaluated)
    for v in ("v0001", "v0002"):
        folder = run / "reports" / v
        assert json.loads((folder / "report.json").read_text())["sampling"]["version"] == v
        assert f"synthetic version **{v}**" in (folder / "report.md").read_text()
        assert {"samples.png", "gains.png", "training.png", "closest_pairs.png"} <= {f.name for f in folder.iterdir()}
    top = (run / "report.md").read_text()
    assert "synthetic version **v0002**" in top
    # a 20-step generator on a 12-subject set: the report says what not to trust, at its top
    assert "**Warning: the generator looks under-trained:**" in top and "--train-steps 80" in top
    assert "**Warning: the test split holds fewer than 5 subjects" in top
    from motfm_core.data.describe import describe

    summary = describe(run)  # `motfm inspect RUN`: the versions side by side with their reports' numbers
    assert "2 synthetic version(s)" in summary and "v0002.zarr <- latest" in summary
    assert summary.count("accuracy gain") == 2 and "reports/v0001/report.md" in summary
    assert (run / "checkpoints" / "model.pt").stat().st_mtime_ns == before  # no retraining
    with pytest.raises(FileNotFoundError, match="run synth-and-eval with run_name='nope'"):
        regenerate_synthetic(run_name="nope", output_root=str(tmp_path))


def test_bad_parameter_fails_before_any_work(harness, tmp_path):
    with pytest.raises(ValueError, match=r"sample: unknown parameter\(s\) \['nfee'\]"):
        synth_and_eval(run_name="bad", output_root=str(tmp_path), **{**TINY, "overrides": {"sample": {"nfee": 3}}})
    with pytest.raises(ParameterTypeError, match="solver"):  # a typed parameter: refused before the flow starts
        synth_and_eval(run_name="bad", output_root=str(tmp_path), **{**TINY, "solver": "magic"})
    with pytest.raises(ParameterTypeError, match="model_size"):
        synth_and_eval(run_name="bad", output_root=str(tmp_path), **{**TINY, "model_size": "huge"})
    with pytest.raises(ValueError, match="sample.solver must be one of"):  # --set reaches the config's own check
        synth_and_eval(run_name="bad", output_root=str(tmp_path), **{**TINY, "overrides": {"sample": {"solver": "x"}}})
    assert not (tmp_path / "bad" / "dataset.zarr").exists()


@pytest.mark.parametrize("how,source", [("controlnet", "deformed"), ("concat", "generated")])
def test_mask_conditioned_run_stores_its_masks(harness, tmp_path, how, source):
    params = {**TINY, "samples_per_class": 2, "seeds": [0]}
    params["overrides"] = {**TINY["overrides"], "model": {**TINY_MODEL, "mask_conditioning": how},
                           "sample": {**TINY["overrides"]["sample"], "mask_source": source}}
    synth_and_eval(run_name="m", output_root=str(tmp_path), **params)
    syn = zarr.open_group(str(tmp_path / "m" / "synthetic" / "latest"), mode="r")
    from motfm_core.data import load_split

    train = load_split(str(tmp_path / "m" / "dataset.zarr"), "train")
    src, masks = syn["mask_source"][:], syn["masks"][:]
    assert syn.attrs["mask_source"] == source and masks.max() < 4
    if source == "generated":  # a mask generator of its own, trained as a keyed stage and recorded
        assert (src == -1).all() and (tmp_path / "m" / "checkpoints-masks" / "model.pt").exists()
        assert len(syn.attrs["mask_checkpoint_sha256"]) == 64
        assert (tmp_path / "m" / "low-data" / "real-0.5" / "checkpoints-masks" / "model.pt").exists()
    else:
        assert (src >= 0).all()
        assert np.array_equal(train["labels"][src], syn["labels"][:])  # each mask comes from its own class
    if source == "deformed":  # each source mask moved by its own recorded deformation
        assert not np.array_equal(masks, train["masks"][src])
        params_ = syn["mask_deform"][:]
        assert syn.attrs["mask_deform_columns"][0] == "rotate" and params_.shape == (len(src), 5)
        assert len(np.unique(params_[:, 0])) == len(src) and np.abs(np.degrees(params_[:, 0])).max() <= 7.5
    md = (tmp_path / "m" / "report.md").read_text()
    assert f"Conditioning masks: `{source}`" in md
    seg = json.loads((tmp_path / "m" / "report.json").read_text())["evaluation"]["segmentation"]
    assert set(seg["gains"]) == {"real+synthetic", "real+synthetic x0.5", "synthetic", "real 50%+synthetic"}
    assert 0 <= seg["summary"]["real"]["dice"]["mean"] <= 1 and seg["gains"]["real+synthetic"]["dice"]["n_boot"] > 0
    md = (tmp_path / "m" / "report.md").read_text()
    assert "Segmenter: Dice gain" in md and "| real 50%+synthetic (vs real 50%) |" in md


def test_report_has_quality_against_its_baseline_and_enhancement(harness, tmp_path):
    """One run: the quality section beside its real-vs-real baseline, the audit, the DDPM baseline's arms and the
    enhancement tasks asked for through flow parameters (each at its default level)."""
    params = {**TINY, "seeds": [0], "enhance": ["denoise", "superres"]}
    params["overrides"] = {**TINY["overrides"], "enhance": {"channels": [16, 16], "steps": 10, "nfe": 2},
                           "eval": {**TINY["overrides"]["eval"], "real_fractions": [],  # no low-data generator
                                    "ddpm_arms": [3]}}
    synth_and_eval(run_name="q", output_root=str(tmp_path), **params)
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    q = report["evaluation"]["quality"]
    for block in ("synthetic_vs_test", "train_vs_test"):
        assert set(q[block]) == {"fid", "kid", "precision", "recall", "density", "coverage", "swd"}
        assert q[block]["fid"] >= 0 and q[block]["swd"]["mean"] > 0
        assert q[block]["density"] >= 0 and 0 <= q[block]["coverage"] <= 1
    assert [r["nfe"] for r in q["nfe_curve"]] == [1, 2] and all(r["fid"] >= 0 for r in q["nfe_curve"])
    assert (tmp_path / "q" / "gains.png").stat().st_size > 1000
    t = report["training"]  # a 20-step run's loss curve has every step (it was one point: a single dot)
    assert t["loss_every"] == 1 and len(t["loss_curve"]) == t["steps"] == 20
    md = (tmp_path / "q" / "report.md").read_text()
    assert "real train (baseline)" in md and "Memorisation audit" in md and "95% CI" in md
    assert "| density | coverage |" in md and "(Naeem et al. 2020): coverage" in md  # the table, the first screen
    mem = report["evaluation"]["memorisation"]
    assert 0 <= mem["fraction_flagged"] <= 1 and (tmp_path / "q" / "closest_pairs.png").exists()
    g = report["evaluation"]["gain"]["accuracy"]
    assert -1 <= g["ci95_low"] <= g["ci95_high"] <= 1 and g["n_boot"] > 0
    # the DDPM baseline: trained beside the flow, sampled with DDIM into a version of its own, its arms evaluated
    from motfm_core.data import open_store

    ddpm = open_store(tmp_path / "q" / "baseline-ddpm" / "nfe-3" / "synthetic" / "latest").attrs
    assert ddpm["solver"] == "ddim" and ddpm["nfe"] == 3
    assert ddpm["checkpoint"].endswith("baseline-ddpm/checkpoints/model.pt")
    assert {"real+synthetic DDPM NFE 3", "synthetic DDPM NFE 3"} <= set(report["evaluation"]["gains"])
    assert q["arm_stores"]["DDPM NFE 3"]["fid"] >= 0
    assert "| DDPM baseline (DDIM) | 3 |" in md and "vs the DDPM baseline at its best DDIM NFE (3)" in md
    # each store's sampling cost (its shard records), in the per-NFE table beside its gains
    from motfm_core.data.synthetic import sampling_seconds

    ddpm_seconds = sampling_seconds(tmp_path / "q" / "baseline-ddpm" / "nfe-3" / "synthetic" / "latest")[0]
    assert q["arm_stores"]["DDPM NFE 3"]["seconds_per_image"] == pytest.approx(ddpm_seconds) and ddpm_seconds > 0
    assert f"| DDPM baseline (DDIM) | 3 | {ddpm_seconds * 1e3:.1f} |" in md
    main = report["sampling"]
    assert f"| flow matching (Euler) | {main['nfe']} | {main['seconds_per_image'] * 1e3:.1f} |" in md

    e, sr = report["enhancement"]
    assert e["config"]["task"] == "denoise" and e["nfe"] == 2 and "flow" in e
    assert e["config"]["level"] == 0.1 and sr["config"]["level"] == 2.0  # each task's default level
    assert "Image enhancement" in md
    with pytest.raises(ValueError, match="enhance: unknown parameter"):
        synth_and_eval(run_name="e2", output_root=str(tmp_path),
                       **{**params, "overrides": {"enhance": {"stepz": 1}}})


def test_corrupt_input_fails_ingest_by_name_and_keeps_earlier_outputs(harness, tmp_path):
    import pandas as pd
    from PIL import Image

    src = tmp_path / "pngs"
    src.mkdir()
    rng = np.random.RandomState(0)
    rows = []
    for i in range(18):
        Image.fromarray((rng.rand(20, 20) * 255).astype(np.uint8)).save(src / f"img{i}.png")
        rows.append({"filename": f"img{i}.png", "label": ["a", "b", "c"][i % 3], "subject": f"p{i}"})
    pd.DataFrame(rows).to_csv(src / "labels.csv", index=False)
    params = {**TINY, "dataset": str(src), "samples_per_class": 2, "seeds": [0],
              "overrides": {**TINY["overrides"], "eval": {**TINY["overrides"]["eval"], "real_fractions": []}}}
    synth_and_eval(run_name="c", output_root=str(tmp_path), **params)
    run = tmp_path / "c"
    fingerprint = zarr.open_group(str(run / "dataset.zarr"), mode="r").attrs["fingerprint"]
    (src / "img4.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="img4.png"):
        synth_and_eval(run_name="c", output_root=str(tmp_path), **params)
    assert zarr.open_group(str(run / "dataset.zarr"), mode="r").attrs["fingerprint"] == fingerprint
    assert (run / "synthetic" / "latest").resolve().name == "v0001.zarr" and (run / "report.md").exists()


def test_too_small_dataset_fails_at_ingest_without_retries(harness, tmp_path):
    """Bad data is not transient: one attempt of the ingest task, an error with the numbers needed, no run folder
    content beyond what the failed attempt left (nothing)."""
    import pandas as pd
    from PIL import Image
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        Image.fromarray((rng.rand(16, 16) * 255).astype(np.uint8)).save(folder / f"i{i}.png")
    pd.DataFrame({"filename": [f"i{i}.png" for i in range(3)], "label": [0, 1, 0]}).to_csv(folder / "labels.csv",
                                                                                         index=False)
    state = synth_and_eval(run_name="small", output_root=str(tmp_path / "out"),
                           **{**TINY, "dataset": str(folder)}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="too small to train and evaluate"):
        state.result()

    async def ingest_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
                state.state_details.flow_run_id])))
            return [r for r in runs if r.name.startswith("ingest")]

    import asyncio

    runs = asyncio.run(ingest_runs())
    assert len(runs) == 1 and runs[0].run_count == 1  # no retry
    assert not (tmp_path / "out" / "small" / "dataset.zarr").exists()
    assert not (tmp_path / "out" / "small" / "config.json").exists()
