"""The team deployment's files, checked without Docker (not installable here): the compose file publishes the
Prefect server on loopback unless an auth string is set, the image leaves outputs, Prefect homes, venvs and git
out, and git ignores what local.sh creates."""

import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deployments" / "team" / "docker-compose.yml"


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR} interpolation and its $$ escape (what we use of it)."""
    def one(m: re.Match) -> str:
        name, op, word = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name, "")
        if op == ":-":
            return value or word
        if op == ":?" and not value:
            raise KeyError(f"{name}: {word}")
        return value
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, text).replace("$$", "$")


def _server(env: dict[str, str]) -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), {"POSTGRES_PASSWORD": "p@ss:w/rd", **env}))["services"]


def _starts(server: dict) -> subprocess.CompletedProcess:
    """The server container's start command, run with its environment, `prefect` replaced by `echo`."""
    script = server["command"][-1].replace("exec prefect", "exec echo prefect")
    env = {**os.environ, **{k: str(v) for k, v in server["environment"].items()}}
    return subprocess.run([*server["command"][:-1], script], env=env, capture_output=True, text=True)


def test_the_server_is_published_on_loopback_by_default_and_the_database_not_at_all():
    services = _server({})
    assert services["server"]["ports"] == ["127.0.0.1:4200:4200"]
    assert "ports" not in services["db"]
    assert _starts(services["server"]).returncode == 0


def test_publishing_beyond_loopback_needs_the_auth_string():
    open_no_auth = _server({"MOTFM_SERVER_BIND": "0.0.0.0"})["server"]
    assert open_no_auth["ports"] == ["0.0.0.0:4200:4200"]
    refused = _starts(open_no_auth)
    assert refused.returncode == 2 and "without PREFECT_SERVER_API_AUTH_STRING" in refused.stderr
    with_auth = _server({"MOTFM_SERVER_BIND": "0.0.0.0", "PREFECT_SERVER_API_AUTH_STRING": "admin:secret"})["server"]
    started = _starts(with_auth)
    assert started.returncode == 0 and "prefect server start" in started.stdout


def test_the_database_password_is_never_pasted_into_a_url():
    """Prefect builds the URL from the parts and encodes the password: '@', ':' and '/' in it stay the password."""
    env = _server({})["server"]["environment"]
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert env["PREFECT_SERVER_DATABASE_PASSWORD"] == "p@ss:w/rd"
    parts = {k: str(v) for k, v in env.items() if k.startswith("PREFECT_SERVER_DATABASE_")}
    code = ("from prefect.settings import get_current_settings;"
            "print(get_current_settings().server.database.connection_url.get_secret_value())")
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         env={**os.environ, **parts})
    assert out.stdout.strip() == "postgresql+asyncpg://prefect:p%40ss%3Aw%2Frd@db:5432/prefect", out.stderr


def test_the_image_and_git_leave_out_data_prefect_homes_venvs_and_history():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("outputs/", ".prefect/", ".prefect-server/", ".venv/", ".git/", "**/*.zarr"):
        assert entry in ignored, entry
    assert ".prefect-server/" in (ROOT / ".gitignore").read_text().split()
