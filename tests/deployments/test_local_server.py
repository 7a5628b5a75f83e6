"""The server path for real: `deployments/local.sh up --postgres` (Prefect server on a free loopback port backed by
a PostgreSQL server of its own from Debian's package, temporary PREFECT_HOME; SQLite where PostgreSQL is not
installed: `make test` installs it), `prefect deployment run synth-and-eval/synth-and-eval`, a worker killed
mid-sampling and restarted while a second run with other output roots runs beside it, and the regenerate-synthetic
schedule. The embedded SQLite server is what tests/flows/test_cli.py and `make demo` run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from motfm_core.config import SampleConfig, from_dict
from motfm_core.data import shard_complete
from motfm_core.model.sampling import Sampler, sample_plan
from tests.conftest import TINY_MODEL
from tests.deployments.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "deployments" / "local.sh"
PREFECT = ROOT / ".venv" / "bin" / "prefect"
TINY = {"dataset": "phantom:12", "image_size": 16, "train_steps": 20, "nfe": 40, "samples_per_class": 10,
        "seeds": [0], "overrides": {"model": {**TINY_MODEL, "channels": [16, 16]},
                                    "train": {"batch_size": 8, "warmup_steps": 5, "checkpoint_every": 10},
                                    "sample": {"shard_size": 1, "batch_size": 1},
                                    "eval": {"steps": 10, "channels": [8, 16], "real_fractions": [], "ratios": [1.0],
                                             "seg_steps": 10, "seg_channels": [8, 16], "nfe_curve": [1],
                                             "nfe_curve_samples": 2}}}

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
pytestmark = pytest.mark.skipif(not PREFECT.exists(), reason="needs the project venv (make venv)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    pg_data = tempfile.mkdtemp(prefix="motfm-pg-")  # under /tmp: reachable by the postgres user when we are root
    env = {**os.environ, "PREFECT_HOME": str(home), "MOTFM_PREFECT_PORT": str(port),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "MOTFM_PG_PORT": str(_free_port()),
           "MOTFM_PG_DATA": pg_data,
           # two GPU slots (as on a two-GPU machine): the killed run's task keeps one until its 60 s lease lapses
           # (Prefect's task engine fixes that lease), and the two runs below share the other, so they do not wait
           # ~30 s for the lease; a waiting task asks again after 1 s, not Prefect's 10 s
           "MOTFM_GPU_SLOTS": "2", "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
           # lapsed leases are looked for every 2 s, not 15 s
           "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_KEY", None)
    t0 = time.time()
    up = subprocess.run(["bash", str(LOCAL_SH), "up", *(["--postgres"] if PG_BIN else [])], env=env,
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        print(f"local.sh up ({'PostgreSQL' if PG_BIN else 'SQLite'}): {time.time() - t0:.1f}s")
        yield env, home
    finally:
        subprocess.run(["bash", str(LOCAL_SH), "down"], env=env, capture_output=True, timeout=120)
        for name in ("server", "worker", "postgres.data"):
            assert not (home / (name if "." in name else f"{name}.pid")).exists()
        if PG_BIN:  # the database server is stopped too
            assert not (Path(pg_data) / "postmaster.pid").exists()
        shutil.rmtree(pg_data, ignore_errors=True)


def _psql(env, sql: str, password: str | None) -> subprocess.CompletedProcess:
    """`sql` as the server's "prefect" role over loopback, with `password` (None: none given)."""
    pg_env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if password is not None:
        pg_env["PGPASSWORD"] = password
    return subprocess.run([str(PG_BIN[-1] / "psql"), "-h", "127.0.0.1", "-p", env["MOTFM_PG_PORT"], "-U", "prefect",
                           "-d", "prefect", "-w", "-tAc", sql], capture_output=True, text=True, env=pg_env)


def _flow_runs_in_postgres(env) -> int:
    """How many flow runs the PostgreSQL database holds."""
    password = (Path(env["PREFECT_HOME"]) / "postgres.secret").read_text().strip()
    out = _psql(env, "SELECT count(*) FROM flow_run", password)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(not PG_BIN, reason="PostgreSQL not installed (make postgres)")
def test_the_database_role_is_not_a_superuser_and_needs_its_password(server):
    """The server's role was a trust-authenticated superuser; now an ordinary role with a password kept in the
    server's folder, readable by its owner only."""
    env, home = server
    secret = home / "postgres.secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and (home / "postgres-admin.secret").stat().st_mode & 0o777 == 0o600
    role = _psql(env, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user",
                 secret.read_text().strip())
    assert role.returncode == 0 and role.stdout.strip() == "f|f|f", role.stderr
    refused = _psql(env, "SELECT 1", None)
    assert refused.returncode != 0 and "password" in refused.stderr


def _prefect(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(PREFECT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _run(env, params: dict, watch: bool = True, deployment="synth-and-eval/synth-and-eval"):
    args = ["deployment", "run", deployment, "--params", json.dumps(params)]
    return _prefect(env, *args, *(["--watch", "--watch-timeout", "600"] if watch else []))


def _kill_tree(pid: int) -> None:
    """SIGKILL the process groups of `pid` and of every process below it, as a lost machine would."""
    rows = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(map(int, rows[::2]), map(int, rows[1::2])):
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in tree:
        try:
            os.killpg(os.getpgid(p), 9)
        except ProcessLookupError:  # gone with an earlier group
            pass


def _done_shards(run_dir: Path) -> list[int]:
    stores = sorted((run_dir / "synthetic").glob("v*.zarr"))
    if not stores or not (stores[0] / "zarr.json").exists():
        return []
    return [i for i in range(30) if shard_complete(stores[0], i)]


@pytest.fixture(scope="module")
def resumed_run(server, tmp_path_factory):
    """Start a run, kill the worker (and the flow run it started) mid-sampling, start a fresh worker, then resume
    that run while a second, smaller run starts in another output root; returns what the tests check."""
    env, home = server
    tmp_path = tmp_path_factory.mktemp("runs")
    params = {**TINY, "run_name": "svc", "output_root": str(tmp_path / "a")}
    run_dir = tmp_path / "a" / "svc"
    t0 = time.time()
    assert _run(env, params, watch=False).returncode == 0
    end = time.time() + 400
    while len(_done_shards(run_dir)) < 2:
        assert time.time() < end, (home / "worker.log").read_text()[-3000:]
        time.sleep(0.2)
    # kill the worker and the flow run it started (Prefect starts it in a session of its own), mid-sampling;
    # then start a fresh worker
    _kill_tree(int((home / "worker.pid").read_text()))
    time.sleep(1)
    before = _done_shards(run_dir)
    store = sorted((run_dir / "synthetic").glob("v*.zarr"))[0]
    stamps = {i: (store / "shards" / f"{i:05d}" / "zarr.json").stat().st_mtime_ns for i in before}
    time.sleep(2)
    assert _done_shards(run_dir) == before, "the killed flow run kept writing"
    assert len(before) < 30
    assert subprocess.run(["bash", str(LOCAL_SH), "worker"], env=env, timeout=60).returncode == 0

    small = {**params, "samples_per_class": 3, "nfe": 2, "output_root": str(tmp_path / "b")}
    other = subprocess.Popen([str(PREFECT), "deployment", "run", "synth-and-eval/synth-and-eval", "--params",
                              json.dumps(small), "--watch",
                              "--watch-timeout", "600"], env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    res = _run(env, params)
    other_out = other.communicate(timeout=700)[0]
    print(f"deployment run (with a kill and a restart, beside a second run): {time.time() - t0:.1f}s")
    assert res.returncode == 0 and "COMPLETED" in res.stdout.upper(), res.stdout[-3000:] + res.stderr[-2000:]
    assert other.returncode == 0, other_out[-3000:]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout)
    assert flow_run_id, res.stdout[-2000:]
    return {"run_dir": run_dir, "store": store, "stamps": stamps, "other_root": tmp_path / "b",
            "flow_run_id": flow_run_id.group(1)}


def test_a_killed_worker_loses_nothing_and_a_concurrent_run_does_not_interfere(server, resumed_run):
    """Both runs complete; the resumed one keeps its finished shards, writes each missing one once, and holds
    exactly what one uninterrupted sampler draws; the other holds its own plan."""
    env, home = server
    run_dir, store, stamps = resumed_run["run_dir"], resumed_run["store"], resumed_run["stamps"]
    assert sorted((run_dir / "synthetic").glob("v*.zarr")) == [store]  # resumed, not restarted
    assert all((store / "shards" / f"{i:05d}" / "zarr.json").stat().st_mtime_ns == t for i, t in stamps.items())
    syn = zarr.open_group(str(run_dir / "synthetic" / "latest"), mode="r")
    assert syn["images"].shape == (30, 1, 16, 16) and np.isfinite(syn["images"][:]).all()
    assert sorted(syn["seed"][:].tolist()) == sorted(set(syn["seed"][:].tolist()))  # no duplicate sample
    report = json.loads((run_dir / "report.json").read_text())
    assert report["sampling"]["num_samples"] == 30 and "accuracy" in report["evaluation"]["gain"]
    # the same data as one uninterrupted sampler in this process (copy guard and conditioning masks included)
    cfg = from_dict(SampleConfig, syn.attrs["sample_config"])
    sampler = Sampler(syn.attrs["checkpoint"], cfg, "cpu", syn.attrs.get("mask_checkpoint") or None,
                      syn.attrs.get("copy_threshold"))
    direct, _, cond = sampler.draw_guarded(np.arange(30))
    np.testing.assert_array_equal(syn["seed"][:], cond["seed"])
    np.testing.assert_allclose(syn["images"][:], direct, atol=1e-4)
    other_syn = zarr.open_group(str(resumed_run["other_root"] / "svc" / "synthetic" / "latest"), mode="r")
    labels, seeds = sample_plan(3, from_dict(SampleConfig, other_syn.attrs["sample_config"]))
    assert np.array_equal(other_syn["labels"][:], labels) and np.array_equal(other_syn["seed"][:], seeds)
    assert np.isfinite(other_syn["images"][:]).all()
    if PG_BIN:  # the runs' state lives in PostgreSQL, not in a SQLite file
        assert _flow_runs_in_postgres(env) >= 3 and not (home / "prefect.db").exists()


def test_a_bad_choice_is_refused_through_the_api_before_a_run_starts(server, tmp_path):
    """Typed parameters: the deployment's schema lists the choices (the UI offers them) and the API refuses
    another value when the run is created, so no run starts and nothing is written."""
    env, _ = server
    res = _prefect(env, "deployment", "inspect", "synth-and-eval/synth-and-eval")
    schema = "".join(res.stdout.split())  # the CLI pretty-prints over several lines
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'enum':['euler','midpoint','heun','rk4','dopri5','rflow','ddpm','ddim']" in schema, res.stdout[-3000:]
    assert "'enum':['small','medium','large']" in schema
    bad = _run(env, {**TINY, "run_name": "bad", "output_root": str(tmp_path), "solver": "magic"}, watch=False)
    assert bad.returncode != 0 and "magic" in bad.stdout + bad.stderr, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


def test_regenerate_deployment_has_an_active_weekly_schedule(server):
    env, _ = server
    res = _prefect(env, "deployment", "inspect", "regenerate-synthetic/regenerate-synthetic")
    assert res.returncode == 0, res.stderr
    assert "0 3 * * 1" in res.stdout and "'active': True" in res.stdout
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (regen,) = [d for d in spec["deployments"] if d["name"] == "regenerate-synthetic"]
    assert regen["entrypoint"] == "flows/regenerate.py:regenerate_synthetic"
    assert regen["parameters"]["retrain"] is False
    limit = _prefect(env, "concurrency-limit", "inspect", "motfm-gpu", "--output", "json")  # GPU stages: slots
    assert limit.returncode == 0 and json.loads(limit.stdout)["concurrency_limit"] == 2, limit.stdout + limit.stderr


def _task_node_pixels(png: Path, box: list[float]) -> int:
    """How many pixels of a screenshot inside the graph's `box` ([x, y, width, height], CSS pixels at scale 1) have
    the bright green of a completed task node (the state bar along its bottom edge left out)."""
    from PIL import Image

    x, y, w, h = (int(v) for v in box)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)[y:y + h - 10, x:x + w]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((g > 120) & (g > r + 60) & (g > b + 40)).sum())


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (make test installs chromium-headless-shell)")
def test_the_run_page_and_its_report_render_in_a_browser(server, resumed_run):
    """The UI, seen: headless Chromium opens the resumed run's page (state, flow name and the DAG drawn; the
    Artifacts tab lists the report and the gain table) and the report artifact, whose heading, verdict, gain table
    and every figure of report.md render (images decoded, not broken links); screenshots of both pages are saved
    under $MOTFM_TEST_OUTPUT (default outputs/test-ui)."""
    env, _ = server
    api, run_id = env["PREFECT_API_URL"], resumed_run["flow_run_id"]
    ui = api.removesuffix("/api")
    out = Path(os.environ.get("MOTFM_TEST_OUTPUT", ROOT / "outputs" / "test-ui"))
    out.mkdir(parents=True, exist_ok=True)
    markdown = (resumed_run["run_dir"] / "report.md").read_text()
    figures = re.findall(r"!\[([^\]]*)\]\(([^)]+\.png)\)", markdown)
    assert len(figures) >= 3, markdown  # training loss, gains, samples (closest pairs when flagged)
    query = {"artifacts": {"key": {"any_": ["synth-and-eval-report"]}, "flow_run_id": {"any_": [run_id]}}}
    req = urllib.request.Request(f"{api}/artifacts/filter", json.dumps(query).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        (artifact,) = json.load(r)
    browser = Browser(find_chromium())
    try:
        t0 = time.time()
        browser.goto(f"{ui}/runs/flow-run/{run_id}")
        browser.wait_for_text("Completed", "synth-and-eval", "Task runs", "Artifacts")
        graph = browser.wait_for("(c => c && c.width > 0 && (r => [r.x, r.y, r.width, r.height])"
                                 "(c.getBoundingClientRect()))(document.querySelector('canvas'))")
        # the DAG is drawn on a canvas once the task runs load, then laid out: wait until it shows completed task
        # nodes (a node is ~2000 green pixels) and two screenshots a second apart agree
        end, last = time.time() + 60, -1
        while True:
            now = _task_node_pixels(browser.screenshot(out / "run-page.png"), graph)
            if now > 5000 and now == last:
                break
            assert time.time() < end, f"the run page's graph shows no completed task nodes ({now} green pixels)"
            last = now
            time.sleep(1)
        print(f"run page and graph drawn in {time.time() - t0:.1f}s: {out / 'run-page.png'}")
        browser.evaluate("[...document.querySelectorAll('[role=tablist] li, [role=tab]')]"
                         ".find(e => e.textContent.trim() == 'Artifacts').click()")
        browser.wait_for_text("synth-and-eval-report", "augmentation-gain")  # the run's Artifacts tab lists both
        browser.goto(f"{ui}/artifacts/artifact/{artifact['id']}")
        browser.wait_for_text("motfm report: svc", "Verdict", "real+synthetic")
        images = browser.wait_for(
            f"(imgs => imgs.length == {len(figures)} && imgs.every(i => i.complete && i.naturalWidth > 0) && "
            "imgs.map(i => [i.alt, i.naturalWidth, i.naturalHeight]))([...document.querySelectorAll('img')]"
            ".filter(i => i.src.startsWith('data:image/png')))")
        print(f"report artifact drawn: {browser.screenshot(out / 'report-artifact.png')}")
    finally:
        browser.close()
    assert [alt for alt, _, _ in images] == [alt for alt, _ in figures]
    for (alt, png), (_, width, height) in zip(figures, images):  # each figure is the PNG the run wrote
        with open(resumed_run["run_dir"] / png, "rb") as f:
            header = f.read(24)
        assert (width, height) == (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")), alt


def test_a_regeneration_that_cannot_start_says_why_where_watch_shows_it(server, tmp_path):
    """`prefect deployment run regenerate-synthetic/... --watch` of a run that does not exist showed only
    `Flow run finished in state 'Failed'.`; the reason was in the worker's log alone."""
    env, _ = server
    res = _run(env, {"run_name": "nobody", "output_root": str(tmp_path)},
               deployment="regenerate-synthetic/regenerate-synthetic")
    assert res.returncode != 0
    out = " ".join((res.stdout + res.stderr).split())  # the console wraps long lines
    assert "regenerate-synthetic cannot start:" in out and "no run to regenerate from" in out, out[-3000:]


def test_motfm_schedule_regenerates_ones_own_run(server, resumed_run):
    """The weekly schedule of prefect.yaml regenerates a run called `synth-and-eval`, nobody's; `motfm schedule RUN`
    makes a deployment of that run's own, whose schedule an update replaces, and which regenerates it."""
    env, _ = server
    run_dir = resumed_run["run_dir"]

    def schedule(*args):
        return subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "flows.motfm", "schedule", str(run_dir),
                               *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)

    first = schedule("--cron", "0 4 * * 2")
    assert first.returncode == 0 and "regenerate-synthetic/regenerate-svc" in first.stdout, first.stderr[-2000:]
    second = schedule("--cron", "30 5 * * 3", "--timezone", "Europe/Berlin")
    assert second.returncode == 0 and "1 schedule" in second.stdout, second.stdout + second.stderr[-2000:]
    spec = _prefect(env, "deployment", "inspect", "regenerate-synthetic/regenerate-svc")
    assert spec.returncode == 0, spec.stderr[-2000:]
    text = "".join(spec.stdout.split())
    assert "'cron':'305**3'" in text and "'timezone':'Europe/Berlin'" in text and "'cron':'04**2'" not in text
    assert "'run_name':'svc'" in text and f"'output_root':'{run_dir.parent}'" in text
    # another output root's run of the same name does not take that deployment over
    other = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "flows.motfm", "schedule",
                            str(resumed_run["other_root"] / "svc"), "--cron", "0 1 * * *"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "already regenerates" in other.stderr, other.stdout + other.stderr[-2000:]
    bad = schedule("--cron", "every monday")
    assert bad.returncode == 2 and bad.stderr.startswith("motfm: error: --cron 'every monday'"), bad.stderr
    # the schedule's deployment regenerates this run (smaller, to keep the suite short): a new version, its report
    res = _run(env, {"samples_per_class": 3, "nfe": 2}, deployment="regenerate-synthetic/regenerate-svc")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert (run_dir / "synthetic" / "latest").resolve().name == "v0002.zarr"
    assert "synthetic version **v0002**" in (run_dir / "reports" / "v0002" / "report.md").read_text()
    assert "synthetic version **v0002**" in (run_dir / "report.md").read_text()
