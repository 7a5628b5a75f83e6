from dataclasses import replace

import numpy as np
import pytest
import torch

from motfm_core.config import ModelConfig, SampleConfig, TrainConfig
from motfm_core.model.sampling import generate, sample_plan
from motfm_core.model.training import flow_matching_loss, load_checkpoint, model_for_data, train_flow_matching
from tests.conftest import TINY_MODEL

MODEL = ModelConfig(image_size=16, num_classes=3, **TINY_MODEL)


def test_checkpoint_loads_with_weights_only_and_holds_config(tiny_checkpoint, phantom_store):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    assert ckpt["step"] == 30 and len(ckpt["losses"]) == 30
    assert ckpt["model_config"]["channels"] == (16, 16)
    from motfm_core.data import open_store

    assert ckpt["data_fingerprint"] == open_store(phantom_store).attrs["fingerprint"]
    model, meta = load_checkpoint(tiny_checkpoint)
    assert meta["class_names"] == ["disc", "two discs", "ring"] and not model.training


def test_same_seed_same_samples_after_round_trip(tiny_checkpoint):
    cfg = SampleConfig(samples_per_class=2, nfe=3, batch_size=4)
    labels, seeds = sample_plan(3, cfg)
    a, nfe_a = generate(load_checkpoint(tiny_checkpoint)[0], labels, seeds, cfg)
    b, _ = generate(load_checkpoint(tiny_checkpoint)[0], labels, seeds, cfg)
    assert nfe_a == 3 and a.shape == (6, 1, 16, 16)
    assert np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    # batching does not change a sample: it depends on its own seed only
    c, _ = generate(load_checkpoint(tiny_checkpoint)[0], labels[3:], seeds[3:], SampleConfig(nfe=3, batch_size=1))
    assert np.allclose(a[3:], c, atol=1e-5)


class Killed(Exception):
    pass


def _unbroken_and_killed_at_4(store, cfg: TrainConfig, unbroken, killed) -> dict:
    """Train `cfg` to the end into `unbroken` (its model.pt returned), and into `killed` until right after the
    step-4 checkpoint, where the run is interrupted (an exception from its progress callback)."""
    full = torch.load(train_flow_matching(store, MODEL, cfg, unbroken, device="cpu"), weights_only=True)

    def kill_at_4(msg):
        if "step 4/" in msg:
            raise Killed

    with pytest.raises(Killed):
        train_flow_matching(store, MODEL, cfg, killed, device="cpu", progress=kill_at_4)
    return full


def test_resume_after_kill_matches_uninterrupted_run(phantom_store, tmp_path):
    """A run killed right after its step-4 checkpoint and resumed ends bitwise equal to an unbroken run."""
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=4)
    full = _unbroken_and_killed_at_4(phantom_store, cfg, tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "b" / "model.pt").exists()
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 4
    messages = []
    resumed = torch.load(train_flow_matching(phantom_store, MODEL, cfg, tmp_path / "b", device="cpu",
                                             progress=messages.append), weights_only=True)
    assert any("resuming" in m and "step 4/8" in m for m in messages)
    assert resumed["losses"] == full["losses"]
    for k, v in full["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    # and a finished run is reused, not retrained
    messages.clear()
    train_flow_matching(phantom_store, MODEL, cfg, tmp_path / "b", device="cpu", progress=messages.append)
    assert messages and "reusing" in messages[0]


def test_loss_falls_on_phantoms(tiny_checkpoint):
    losses = torch.load(tiny_checkpoint, weights_only=True)["losses"]
    assert np.mean(losses[-10:]) < np.mean(losses[:5])


def test_flow_matching_loss_is_zero_for_the_exact_velocity():
    """A 'model' that returns the true conditional target gives zero loss (checks the loss wiring)."""
    cfg = TrainConfig(class_dropout=0.0)
    x1, y = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x0 = torch.randn(x1.shape, generator=g2)
    t = torch.rand(4, generator=g2)

    class Oracle(torch.nn.Module):
        null_class = 1

        def forward(self, xt, tt, yy, mask=None):
            assert torch.allclose(tt, t)
            return x1 - x0

    assert float(flow_matching_loss(Oracle(), x1, y, cfg, g1)) < 1e-10


def test_unknown_config_key_is_refused():
    from motfm_core.config import PipelineConfig

    with pytest.raises(ValueError, match=r"train: unknown parameter\(s\) \['stepz'\]"):
        PipelineConfig.from_overrides({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="sample.nfe must be >= 1"):
        PipelineConfig.from_overrides({"sample": {"nfe": 0}})


def test_3d_train_and_sample(tmp_path):
    """The same code trains and samples volumes when the data are 3D (spatial_dims from the data)."""
    from motfm_core.config import DataConfig
    from motfm_core.data import ingest

    store = ingest(DataConfig(source="phantom:6", image_size=16, spatial_dims=3, depth=8), tmp_path / "d.zarr")
    cfg = ModelConfig(spatial_dims=3, image_size=16, depth=8, num_classes=3, gradient_checkpointing=True,
                      **TINY_MODEL)
    ckpt = train_flow_matching(store, cfg, TrainConfig(steps=4, batch_size=2, warmup_steps=1), tmp_path / "c",
                               device="cpu")
    model, _ = load_checkpoint(ckpt)
    labels, seeds = sample_plan(3, SampleConfig(samples_per_class=1))
    images, nfe = generate(model, labels, seeds, SampleConfig(samples_per_class=1, nfe=2, solver="heun"))
    assert images.shape == (3, 1, 16, 16, 8) and nfe == 4 and np.isfinite(images).all()


def test_reflow_retrains_on_the_teachers_couplings(tiny_checkpoint, phantom_store, tmp_path):
    """Reflow: the student starts from the teacher, trains on teacher (noise, sample) pairs, and is keyed on the
    teacher's content; a teacher of another architecture is refused."""
    import dataclasses

    from motfm_core.model.training import reflow_pairs

    teacher, meta = load_checkpoint(tiny_checkpoint)
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3, reflow_from=str(tiny_checkpoint),
                      reflow_pairs=10, reflow_steps=2)
    y = torch.tensor([0, 1, 2])
    pairs = reflow_pairs(teacher, y, None, cfg, torch.device("cpu"))
    assert pairs["x0"].shape == pairs["x1"].shape == (10, 1, 16, 16) and pairs["y"].tolist() == [0, 1, 2] * 3 + [0]
    assert pairs["x1"].abs().max() <= 1 and not torch.allclose(pairs["x0"], pairs["x1"])
    out = train_flow_matching(phantom_store, teacher.cfg, cfg, tmp_path / "reflow", device="cpu")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["step"] == 6 and len(ckpt["reflow_teacher_sha256"]) == 64 and ckpt["num_train"] == meta["num_train"]
    student, _ = load_checkpoint(out)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    frozen, _ = load_checkpoint(train_flow_matching(phantom_store, teacher.cfg, dataclasses.replace(cfg, lr=0.0),
                                                    tmp_path / "lr0", device="cpu"))
    for a, b in zip(frozen.state_dict().values(), teacher.state_dict().values()):  # it starts from the teacher
        assert torch.equal(a, b)
    other = dataclasses.replace(teacher.cfg, channels=(8, 8), norm_num_groups=4)
    with pytest.raises(ValueError, match="reflow teacher's model config differs"):
        train_flow_matching(phantom_store, other, cfg, tmp_path / "bad", device="cpu")


def test_progress_is_said_often_with_speed_and_eta(phantom_store, tmp_path, monkeypatch):
    """Between checkpoints, training still says where it is (every PROGRESS_SECONDS): step, s/step and ETA."""
    import motfm_core.model.training as training

    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.0)
    lines: list[str] = []
    train_flow_matching(phantom_store, ModelConfig(image_size=16, num_classes=3, **TINY_MODEL),
                        TrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=4), tmp_path,
                        device="cpu", progress=lines.append)
    steps = [line for line in lines if line.startswith("train: step")]
    assert [s.split()[2] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("s/step" in s and "ETA" in s for s in steps) and steps[-1].endswith(", checkpoint")
    assert "ETA 0s" in steps[-1]


def test_data_parallel_training_matches_one_process_and_resumes(phantom_store, tmp_path):
    """Two gloo ranks at the same global batch give one process's loss curve and weights (float rounding), and
    resume from the checkpoint a one-process run left (the device count is not part of the run key)."""
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=4)
    one = _unbroken_and_killed_at_4(phantom_store, cfg, tmp_path / "one", tmp_path / "two")
    said: list[str] = []
    two = torch.load(train_flow_matching(phantom_store, MODEL, replace(cfg, devices=2), tmp_path / "two",
                                         device="cpu", progress=said.append), weights_only=True)
    assert any("data-parallel over 2 processes" in m for m in said)
    assert any("resuming" in m and "step 4/8" in m for m in said), said
    assert [m for m in said if m.startswith("train: step")][-1].startswith("train: step 8/8")
    assert two["world_size"] == 2 and two["rank_rows"] == [[0, 2], [2, 4]] and two["run_key"] == one["run_key"]
    assert two["losses"][:4] == one["losses"][:4]
    np.testing.assert_allclose(two["losses"][4:], one["losses"][4:], rtol=1e-4)
    for k, v in one["ema"].items():
        torch.testing.assert_close(two["ema"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["last.pt", "model.pt"]


def test_devices_must_divide_the_batch():
    with pytest.raises(ValueError, match="train.devices must be >= 1 and divide train.batch_size"):
        TrainConfig(batch_size=6, devices=4).validate()


def test_ema_warms_up_so_a_short_run_is_not_its_initial_weights(phantom_store, tmp_path):
    """Without the warm-up, 0.995^n of the EMA stays the random initial weights (47% after 150 steps): a short
    run sampled noise. With it the decay ramps (1 + k) / (10 + k) up to ema_decay."""
    from motfm_core.model.training import ema_decay

    cfg = TrainConfig(steps=20, batch_size=4, warmup_steps=2, checkpoint_every=20)
    assert ema_decay(0, cfg) == pytest.approx(0.1) and ema_decay(10_000, cfg) == cfg.ema_decay
    assert ema_decay(0, replace(cfg, ema_warmup=False)) == cfg.ema_decay
    initial_share = np.prod([ema_decay(k, cfg) for k in range(cfg.steps)])
    assert initial_share < 1e-3 < 0.995 ** cfg.steps
    gaps = {}
    for warm in (True, False):
        out = tmp_path / str(warm)
        train_flow_matching(phantom_store, MODEL, replace(cfg, ema_warmup=warm), out, device="cpu")
        last = torch.load(out / "last.pt", weights_only=True)
        gaps[warm] = sum(float((last["ema"][k] - v).norm()) for k, v in last["model"].items()
                         if v.is_floating_point())
    assert gaps[True] < 0.5 * gaps[False], gaps


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_a_low_data_generator_reads_its_share_alone(phantom_store, monkeypatch, fraction):
    """The training set of a low-data generator was the whole train split read into memory, then its share
    copied out of it; now only the share's rows are read (#37: the low-data share is indices, not a copy), and
    the arrays are the same."""
    import motfm_core.model.trainset as trainset
    from motfm_core.config import TrainConfig
    from motfm_core.data.store import load_split, read_rows, stratified_subset

    full = load_split(phantom_store, "train")
    idx = stratified_subset(full["labels"], fraction, 0)
    read = []

    def spy(root, rows):
        read.append(len(rows))
        return read_rows(root, rows)

    monkeypatch.setattr(trainset, "read_rows", spy)
    got = trainset.training_set(phantom_store, TrainConfig(real_fraction=fraction))
    assert read == [len(idx)] and np.array_equal(got["indices"], idx)  # the share's rows, nothing more
    assert all(np.array_equal(got[k], full[k][idx]) for k in full)
    masks = trainset.training_set(phantom_store, TrainConfig(real_fraction=fraction), target="masks")
    k = int(full["masks"].max()) + 1  # the classes of the whole split, even where the share lacks one
    assert masks["images"].shape == (len(idx), k, *full["masks"].shape[2:])


def test_a_training_set_larger_than_the_memory_given_is_read_from_the_store(tmp_path, monkeypatch):
    """train.memory_gb leaves room for a step but not the 4,000-image set beside it: the planned whole-set path
    would be refused, so the generator trains from batches read from the store (the whole-set reader never runs),
    and a run killed mid-way resumes to the weights of an uninterrupted one."""
    from motfm_core.data.store import write_dataset
    from motfm_core.model import trainset
    from motfm_core.model.memory import MemoryPlanError, plan_training

    rng = np.random.default_rng(0)
    n = 4000
    images = rng.random((n, 1, 32, 32), dtype=np.float32)
    store = write_dataset(tmp_path / "big.zarr", images, np.arange(n) % 2, np.zeros(n, np.uint8),
                          np.arange(n, dtype=np.int32), {"source": "test", "class_names": ["a", "b"]})
    model_cfg = ModelConfig(image_size=32, num_classes=2, gradient_checkpointing="off", **TINY_MODEL)
    step_gb = plan_training(model_cfg, TrainConfig(batch_size=8), "cpu").step_gb
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3, memory_gb=step_gb + 0.008)
    with pytest.raises(MemoryPlanError):  # what holding the set (16 MB) would need
        plan_training(model_cfg, cfg, "cpu", trainset.training_bytes(store, cfg, model_cfg))

    def whole_set(*a, **k):
        raise AssertionError("the whole training set was read")

    monkeypatch.setattr(trainset, "read_rows", whole_set)
    said: list[str] = []
    final = train_flow_matching(store, model_cfg, cfg, tmp_path / "a", device="cpu", progress=said.append)
    assert any("reading it from the store a batch at a time" in s for s in said)
    ckpt = torch.load(final, weights_only=True)
    assert ckpt["num_train"] == n and ckpt["step"] == 6

    stopped = replace(cfg, steps=3)  # a run stopped at its checkpoint, then resumed to the end
    train_flow_matching(store, model_cfg, stopped, tmp_path / "b", device="cpu")
    (tmp_path / "b" / "model.pt").unlink()
    resumed = torch.load(train_flow_matching(store, model_cfg, cfg, tmp_path / "b", device="cpu"), weights_only=True)
    for k, v in ckpt["ema"].items():
        torch.testing.assert_close(resumed["ema"][k], v)


def test_monai_rflow_sampler_on_our_weights(tiny_checkpoint):
    """sample.solver=rflow runs MONAI's RFlowScheduler loop on a trained generator: at 10 steps its grid is Euler's,
    so the images are Euler's to float32 rounding, at the same NFE (at 30 steps, on MONAI's rounded grid, they move)."""
    model, _ = load_checkpoint(tiny_checkpoint)
    labels, seeds = sample_plan(3, SampleConfig(samples_per_class=2))
    euler, nfe_euler = generate(model, labels, seeds, SampleConfig(samples_per_class=2, nfe=10, solver="euler"))
    rflow, nfe_rflow = generate(model, labels, seeds, SampleConfig(samples_per_class=2, nfe=10, solver="rflow"))
    assert nfe_euler == nfe_rflow == 10
    np.testing.assert_allclose(rflow, euler, atol=1e-5)
    assert np.abs(rflow - generate(model, labels, seeds, SampleConfig(samples_per_class=2, nfe=30,
                                                                      solver="rflow"))[0]).max() > 0


def test_a_mask_generator_larger_than_the_memory_given_reads_its_masks_from_the_store(tmp_path, monkeypatch):
    """The mask generator (sample.mask_source=generated) trains on one-hot masks: too many for train.memory_gb, it
    reads the uint8 masks a batch at a time (never the images, never the whole set) and one-hot encodes each batch
    to the model's width (a channel per mask class), as the held set is encoded."""
    from motfm_core.data.loader import RandomBatches
    from motfm_core.data.store import mask_classes, open_store, write_dataset
    from motfm_core.model import trainset
    from motfm_core.model.memory import MemoryPlanError, plan_training

    rng = np.random.default_rng(0)
    n = 3000
    masks = rng.integers(0, 3, (n, 1, 32, 32), dtype=np.uint8)
    masks[:, :, 0, 0] = np.minimum(masks[:, :, 0, 0], 1)
    store = write_dataset(tmp_path / "big.zarr", rng.random((n, 1, 32, 32), dtype=np.float32), np.arange(n) % 2,
                          np.zeros(n, np.uint8), np.arange(n, dtype=np.int32),
                          {"source": "test", "class_names": ["a", "b"]}, masks=masks)
    model_cfg = ModelConfig(image_size=32, num_classes=2, gradient_checkpointing="off", **TINY_MODEL)
    step_gb = plan_training(replace(model_cfg, in_channels=3), TrainConfig(batch_size=8), "cpu").step_gb
    cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=2, checkpoint_every=2, memory_gb=step_gb + 0.008)
    held = trainset.training_bytes(store, cfg, model_for_data(model_cfg, store, "masks"), "masks")
    assert held == n * 3 * 32 * 32 * 4  # one-hot float32: 37 MB, over what is left beside a step

    reads: list[int] = []
    original = RandomBatches.__iter__

    def spy(self):
        assert not self.images and self.masks  # the mask generator reads masks only
        for images, y, m in original(self):
            reads.append(len(m))
            yield images, y, m

    def whole_set(*a, **k):
        raise AssertionError("the whole training set was read")

    monkeypatch.setattr(RandomBatches, "__iter__", spy)
    monkeypatch.setattr(trainset, "read_rows", whole_set)
    said: list[str] = []
    final = train_flow_matching(store, model_cfg, cfg, tmp_path / "m", device="cpu", progress=said.append,
                                target="masks")
    with pytest.raises(MemoryPlanError):
        plan_training(model_for_data(model_cfg, store, "masks"), cfg, "cpu", held)
    assert any("reading it from the store a batch at a time" in s for s in said) and reads == [8] * 4
    model, meta = load_checkpoint(final)
    assert meta["target"] == "masks" and meta["num_train"] == n and model.cfg.in_channels == 3
    assert mask_classes(open_store(store)) == 3
    part = torch.from_numpy(masks[:5])
    assert torch.equal(trainset.one_hot(part, 3).argmax(1, keepdim=True), part.long())
