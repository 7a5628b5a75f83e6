"""`motfm schedule RUN --cron "0 3 * * 1"`: a schedule that regenerates one's own run. It creates (or updates) the
deployment `regenerate-synthetic/regenerate-<run name>` on the Prefect server at $PREFECT_API_URL, with that run's
name and output root as its parameters, the cron schedule given, and the process work pool the local server path
makes (`deployments/local.sh up`); the pool's worker runs it from this checkout. Each regeneration samples a new
synthetic version and writes its report (`reports/vNNNN/`). Schedules need a server that stays up: Prefect's
embedded mode (what `motfm run` uses) ends with its command, so no schedule could fire there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from motfm_core.errors import BadInput, InputMissing

__all__ = ["DEPLOYMENT_PREFIX", "POOL", "schedule_run"]

ROOT = Path(__file__).resolve().parents[1]
POOL = "motfm-process"  # the pool deployments/local.sh makes and prefect.yaml targets
DEPLOYMENT_PREFIX = "regenerate-"
ENTRYPOINT = "flows/regenerate.py:regenerate_synthetic"


def _schedule_of(cron: str, timezone: str) -> Any:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValueError as e:  # pydantic's: an invalid cron string or an unknown time zone
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise BadInput(f"--cron {cron!r} --timezone {timezone!r}: {first}; give five cron fields (minute hour "
                       "day-of-month month day-of-week, e.g. '0 3 * * 1' for Mondays 03:00) and an IANA time zone "
                       "(e.g. UTC, Europe/Berlin)") from None


def schedule_run(run: str | Path, cron: str, timezone: str = "UTC", paused: bool = False, pool: str = POOL) -> str:
    """Create or update the regeneration schedule of the finished run in folder `run`; returns what was done, in
    one line. Refuses (BadInput) a folder that is not a finished run, a bad cron or time zone, no server, or a
    server without the work pool."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.callables import parameter_schema

    from flows.regenerate import regenerate_synthetic

    run_dir = Path(run).resolve()
    if not (run_dir / "config.json").exists() or not (run_dir / "checkpoints" / "model.pt").exists():
        raise InputMissing(f"{run_dir}: not a finished run (needs config.json and checkpoints/model.pt); give the "
                           "folder of a run that trained, e.g. outputs/<run-name>")
    schedule = _schedule_of(cron, timezone)
    if not PREFECT_API_URL.value():
        raise BadInput("motfm schedule needs a Prefect server that stays up (embedded mode ends with each command, "
                       "so no schedule would fire): start one with `deployments/local.sh up`, then `export "
                       "PREFECT_API_URL=http://127.0.0.1:4200/api` and run motfm schedule again")
    name = f"{DEPLOYMENT_PREFIX}{run_dir.name}"
    full = f"{regenerate_synthetic.name}/{name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise BadInput(f"work pool {pool!r} is not on the server at {PREFECT_API_URL.value()}; create it with "
                           f"`prefect work-pool create {pool} --type process` (deployments/local.sh up does) and "
                           "start a worker on it") from None
        try:  # one deployment per run name: another output root's run of that name keeps its own schedule
            other = client.read_deployment_by_name(full).parameters.get("output_root")
        except ObjectNotFound:
            other = None
        if other is not None and Path(other) != run_dir.parent:
            raise BadInput(f"deployment {full} already regenerates {Path(other) / run_dir.name}, another run of the "
                           f"name {run_dir.name!r}; rename this run's folder, or remove that deployment (prefect "
                           f"deployment delete {full})")
        flow_id = client.create_flow_from_name(regenerate_synthetic.name)
        # one schedule per run: an update replaces the deployment's schedules rather than adding another
        client.create_deployment(
            flow_id=flow_id, name=name, entrypoint=ENTRYPOINT, path=str(ROOT),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
            parameters={"run_name": run_dir.name, "output_root": str(run_dir.parent), "retrain": False},
            parameter_openapi_schema=parameter_schema(regenerate_synthetic).model_dump_for_openapi(),
            enforce_parameter_schema=True, work_pool_name=pool,
            job_variables={"env": {"PREFECT_LOGGING_EXTRA_LOGGERS": "motfm_core"}},
            schedules=[DeploymentScheduleCreate(schedule=schedule, active=not paused)],
            tags=["motfm", "regenerate"], description=f"a new synthetic version of {run_dir}, then its report")
        deployment = client.read_deployment_by_name(full)
    state = "paused" if paused else "active"
    return (f"motfm: {run_dir} regenerates on '{cron}' ({timezone}, {state}, {len(deployment.schedules)} "
            f"schedule): deployment {full}; a worker on pool {pool!r} runs it (deployments/local.sh worker), and "
            f"`prefect deployment run {full}` runs it now")
