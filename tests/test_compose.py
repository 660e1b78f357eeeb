"""The compose deployment, checked without a Docker engine.

* ``docker-compose.yml`` (alone and with ``docker-compose.gpu.yml``) is valid for whichever
  validator this machine has: ``docker compose config -q`` (the plugin needs no daemon for
  ``config``), Debian's ``docker-compose config -q``, or the compose JSON schema with
  ``jsonschema`` (the schema file shipped by an installed docker-compose, or ``$HIVE_COMPOSE_SCHEMA``).
* :func:`compose_services` turns each service into the command, environment and health check a
  local process would run (hostnames → 127.0.0.1, compose secrets and volumes → local paths):
  the emulation test builds on it.
* ``docker/nats.conf`` with the ``auth.conf`` of ``hive credentials`` starts a real nats-server
  (ports and store moved to temporary ones) on which the materializer role provisions the stream.
* The emulation test runs the compose services' own commands and environments as local
  processes against that server (the materializer, the distiller, two ``researcher`` replicas, a
  ``deployer`` and an ``analyst``) and checks that the scaled agents' traces reach DuckDB and that
  a distilled, signed model reaches the agents.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import streams
from streams import _auth as auth

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml (dev dependency)")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
NATS_CONF = ROOT / "docker" / "nats.conf"
DOCKER_README = ROOT / "docker" / "README.md"
SCHEMA_CANDIDATES = [
    os.environ.get("HIVE_COMPOSE_SCHEMA", ""),
    str(ROOT / "docker" / "compose-spec.json"),
    "/usr/lib/python3/dist-packages/compose/config/compose_spec.json",  # Debian's docker-compose
]


# --------------------------------------------------------------------------- reading compose files
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` reference to an unset variable (compose refuses these too)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}`` (``:`` forms also treat an empty value as unset)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        expr = m.group("braced")
        op = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?$", expr, re.S)
        if not op:
            raise InterpolationError(f"bad variable reference ${{{expr}}}")
        name, kind, arg = op.group(1), op.group(2), op.group(3) or ""
        value = env.get(name)
        unset = value is None or (kind is not None and kind.startswith(":") and value == "")
        if kind and kind.endswith("-"):
            return arg if unset else str(value)
        if kind and kind.endswith("?"):
            if unset:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        return value or ""

    return _VAR.sub(sub, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(n, env) for n in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    return node


def _merge(base: Any, over: Any) -> Any:
    """Compose's override merge (simplified): mappings merge, command/healthcheck lists replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base and isinstance(base[k], dict) else v
        return out
    return over


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose ``.env`` file (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"').strip("'")
    return out


def load_compose(*files: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated compose model of ``files`` (later files override earlier ones)."""
    env = dict(os.environ if env is None else env)
    model: dict[str, Any] = {}
    for f in files:
        model = _merge(model, _interpolate_tree(yaml.safe_load(f.read_text()), env))
    return model


@dataclass
class ServiceSpec:
    """What one compose service runs, as a local process would run it."""

    name: str
    command: list[str]
    environment: dict[str, str]
    healthcheck: list[str] | None = None
    depends_on: dict[str, str] = field(default_factory=dict)
    """service → condition (``service_healthy``, ``service_started`` …)."""
    paths: dict[str, str] = field(default_factory=dict)
    """container path → local path used to rewrite the command and environment."""
    stop_grace_s: float = 10.0
    """``stop_grace_period``: how long compose waits after SIGTERM before SIGKILL."""


def _duration_s(value: Any, default: float = 10.0) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``, or a number of seconds) in seconds."""
    if value is None:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)?", str(value))
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "": 1.0}
    return sum(float(n) * unit[u] for n, u in parts) if parts else default


def _as_list(cmd: Any) -> list[str]:
    if cmd is None:
        return []
    return [str(c) for c in cmd] if isinstance(cmd, list) else str(cmd).split()


def compose_services(
    *files: Path,
    env: Mapping[str, str] | None = None,
    addresses: Mapping[str, str] | None = None,
    data_root: Path | None = None,
    project_dir: Path = ROOT,
) -> dict[str, ServiceSpec]:
    """Each service's command, environment and health check, rewritten to run locally.

    * hosts: ``<service>:<port>`` found in ``addresses`` becomes its value (e.g.
      ``{"nats:4222": "127.0.0.1:43121"}``); any other ``<service>`` host becomes 127.0.0.1;
    * ``/run/secrets/<name>`` becomes that secret's file; a named volume's mount point becomes
      ``data_root/<volume>`` (created); a bind mount's target becomes its source.
    """
    model = load_compose(*(files or (COMPOSE,)), env=env)
    services = model.get("services", {})
    secrets = {k: str((project_dir / v["file"]).resolve()) for k, v in (model.get("secrets") or {}).items()}
    names = "|".join(map(re.escape, services))
    host_re = re.compile(rf"(?:(?<=://)(?:{names})(?=[:/]|$))|(?:(?<![\w.-])(?:{names})(?=:\d))")
    addresses = dict(addresses or {})

    out = {}
    for name, svc in services.items():
        paths: dict[str, str] = {}
        for s in svc.get("secrets") or []:
            src = s if isinstance(s, str) else s["source"]
            target = s.get("target", src) if isinstance(s, dict) else src
            paths[f"/run/secrets/{target}"] = secrets[src]
        for v in svc.get("volumes") or []:
            parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
            src, target = parts[0], parts[1]
            if src.startswith((".", "/")):
                paths[target] = str((project_dir / src).resolve())
            elif data_root is not None:
                vol_dir = data_root / src
                vol_dir.mkdir(parents=True, exist_ok=True)
                paths[target] = str(vol_dir)

        def local(value: str, paths: dict[str, str] = paths) -> str:
            for hostport, repl in addresses.items():
                value = value.replace(hostport, repl)
            value = host_re.sub("127.0.0.1", value)
            for target in sorted(paths, key=len, reverse=True):
                if value == target or value.startswith(target + "/"):
                    return paths[target] + value[len(target) :]
            return value

        environment = svc.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) for e in environment)
        health = (svc.get("healthcheck") or {}).get("test")
        health = [local(h) for h in health[1:]] if isinstance(health, list) and health[0] == "CMD" else None
        deps = svc.get("depends_on") or {}
        out[name] = ServiceSpec(
            name=name,
            command=[local(c) for c in _as_list(svc.get("command"))],
            environment={k: local(str(v)) for k, v in environment.items()},
            healthcheck=health,
            depends_on={d: "service_started" for d in deps}
            if isinstance(deps, list)
            else {d: c.get("condition", "service_started") for d, c in deps.items()},
            paths=paths,
            stop_grace_s=_duration_s(svc.get("stop_grace_period")),
        )
    return out


# --------------------------------------------------------------------------- fixtures
HIVE_ENTRY_POINT = Path(sys.executable).parent / "hive"
"""The installed ``hive`` console script (what the docs tell users to run)."""


def hive_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``hive`` entry point as a subprocess."""
    assert HIVE_ENTRY_POINT.exists(), f"no installed hive entry point at {HIVE_ENTRY_POINT}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    return subprocess.run(
        [str(HIVE_ENTRY_POINT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def creds_dir(tmp_path: Path) -> Path:
    """Credentials made by the installed ``hive credentials`` entry point (bcrypt cost 4 for speed)."""
    out = tmp_path / "credentials"
    res = hive_cli("credentials", "--out", str(out), "--agents", "3", "--rounds", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture
def compose_env(creds_dir: Path) -> dict[str, str]:
    """The environment compose sees: ours plus the generated ``.env``."""
    return {**os.environ, **read_env_file(creds_dir / ".env")}


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            r = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return cmd
    return None


def _schema() -> Path | None:
    return next((Path(p) for p in SCHEMA_CANDIDATES if p and Path(p).is_file()), None)


def _validate_schema(jsonschema: Any, model: dict[str, Any], schema: Path) -> None:
    """Validate with the draft the compose schema declares (2019-09), falling back to draft 7."""
    spec = json.loads(schema.read_text())
    cls = getattr(jsonschema, "Draft201909Validator", jsonschema.Draft7Validator)
    cls(spec).validate(model)


# --------------------------------------------------------------------------- validity
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_compose_file_is_valid(files: list[Path], compose_env: dict[str, str]) -> None:
    """`docker compose config -q` (or `docker-compose`) accepts the compose file(s); without a
    compose CLI, the compose JSON schema does; skipped only when no validator exists."""
    cli = _compose_cli()
    if cli is not None:
        args = [*cli, "--project-directory", str(ROOT)]
        for f in files:
            args += ["-f", str(f)]
        r = subprocess.run(
            [*args, "config", "-q"], capture_output=True, text=True, env=compose_env, timeout=60
        )
        assert r.returncode == 0, f"{' '.join(cli)} config: {r.stdout}{r.stderr}"
        return
    jsonschema = pytest.importorskip(
        "jsonschema", reason="no validator: install docker-compose (apt) or jsonschema + a compose schema"
    )
    schema = _schema()
    if schema is None:
        pytest.skip("no validator: no compose CLI and no compose JSON schema (set HIVE_COMPOSE_SCHEMA)")
    _validate_schema(jsonschema, load_compose(*files, env=compose_env), schema)


def test_compose_schema_validation(compose_env: dict[str, str]) -> None:
    """The interpolated compose model also validates against the compose JSON schema, when one is
    installed (a second, independent check of the structure)."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    schema = _schema()
    if schema is None:
        pytest.skip("no compose JSON schema on this machine (Debian's docker-compose ships one)")
    for files in ([COMPOSE], [COMPOSE, COMPOSE_GPU]):
        _validate_schema(jsonschema, load_compose(*files, env=compose_env), schema)


def test_compose_refuses_to_start_without_credentials() -> None:
    """Without HIVE_CREDENTIALS_DIR (no `hive credentials` run) the compose file does not resolve,
    so the swarm can never start with an open NATS."""
    env = {k: v for k, v in os.environ.items() if k != "HIVE_CREDENTIALS_DIR"}
    with pytest.raises(InterpolationError, match="hive credentials"):
        load_compose(COMPOSE, env=env)
    cli = _compose_cli()
    if cli is not None:
        r = subprocess.run(
            [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode != 0 and "hive credentials" in r.stdout + r.stderr


def test_compose_services_are_locked_down_and_scalable(compose_env: dict[str, str]) -> None:
    """Every hive service connects with its own mounted credentials; agent services draw from their
    type's pool, have no fixed name or host port (so --scale works); start order uses health."""
    model = load_compose(COMPOSE, env=compose_env)
    svcs = model["services"]
    assert set(svcs) >= {"nats", "hive", "distiller", "researcher", "deployer", "analyst"}
    assert re.match(r"^nats:\d+\.\d+[\w.-]*$", svcs["nats"]["image"]), "pin the nats image version"
    assert "healthcheck" in svcs["nats"] and "healthcheck" in svcs["hive"]
    for name in ("hive", "distiller"):
        assert svcs[name]["environment"]["HIVE_NATS_CREDENTIALS"].startswith("/run/secrets/")
    for t in ("researcher", "deployer", "analyst"):
        s = svcs[t]
        assert s["environment"]["HIVE_AGENT_POOL"] == f"/run/secrets/agents-{t}"
        assert s["secrets"] == [f"agents-{t}"], "an agent mounts only its own type's pool"
        assert "container_name" not in s and "ports" not in s
        assert s["depends_on"]["hive"]["condition"] == "service_healthy"
        assert s["command"][:4] == ["hive", "agent", "run", t]
    for name, s in svcs.items():
        if name != "nats":
            assert not str(s.get("user", "")).startswith("0"), f"{name} must not run as root"
    # model signing: the private key is the distiller's secret alone; agents pin the public key
    assert svcs["distiller"]["environment"]["HIVE_SIGNING_KEY"] == "/run/secrets/signing-key"
    assert "signing-key" in svcs["distiller"]["secrets"]
    assert model["secrets"]["signing-key"]["file"].endswith("/distiller.key")
    assert [n for n, s in svcs.items() if "signing-key" in (s.get("secrets") or [])] == ["distiller"]
    for t in ("researcher", "deployer", "analyst"):
        assert svcs[t]["environment"]["HIVE_MODEL_PUBKEY"] == compose_env["HIVE_MODEL_PUBKEY"]
        streams.load_public_key(svcs[t]["environment"]["HIVE_MODEL_PUBKEY"])
    gpu = load_compose(COMPOSE, COMPOSE_GPU, env=compose_env)["services"]["distiller"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert gpu["deploy"]["resources"]["limits"] == svcs["distiller"]["deploy"]["resources"]["limits"]
    assert "reservations" not in svcs["distiller"]["deploy"]["resources"], (
        "CPU hosts run the base file without a GPU reservation"
    )


HEARTBEAT_SERVICES = ("distiller", "researcher", "deployer", "analyst")
"""The services whose health is their heartbeat file's age (``hive health``)."""


def test_compose_services_are_hardened(compose_env: dict[str, str]) -> None:
    """Issue 11's hardening, on the config made from `hive credentials` (installed entry point):
    no-new-privileges on every service; CPU and memory limits on the agents and the distiller;
    their health checks run `hive health` on the heartbeat file they are told to touch."""
    for files in ([COMPOSE], [COMPOSE, COMPOSE_GPU]):
        svcs = load_compose(*files, env=compose_env)["services"]
        for name, svc in svcs.items():
            assert "no-new-privileges:true" in (svc.get("security_opt") or []), name
        for name in HEARTBEAT_SERVICES:
            svc = svcs[name]
            limits = svc["deploy"]["resources"]["limits"]
            assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+(\.\d+)?[kmg]b?", str(limits["memory"])), (
                limits
            )
            test = svc["healthcheck"]["test"]
            assert test[:3] == ["CMD", "hive", "health"], test
            heartbeat = svc["environment"]["HIVE_HEARTBEAT_FILE"]
            assert test[test.index("--heartbeat-file") + 1] == heartbeat, (name, test)
            assert float(test[test.index("--max-age") + 1]) > 0


def test_every_setting_is_documented() -> None:
    """Each variable the compose files read or set appears in docker/README.md's settings table."""
    text = COMPOSE.read_text() + COMPOSE_GPU.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    model = yaml.safe_load(COMPOSE.read_text())
    used |= set(model["x-hive-env"])
    for svc in model["services"].values():
        used |= set(svc.get("environment") or {})
    readme = DOCKER_README.read_text()
    missing = sorted(v for v in used if f"`{v}`" not in readme)
    assert not missing, f"document in docker/README.md: {missing}"


def test_compose_services_map_to_local_processes(
    creds_dir: Path, compose_env: dict[str, str], tmp_path: Path
) -> None:
    """The helper gives each service's command/environment with hosts on 127.0.0.1 and secrets and
    volumes on local paths (what the emulation test runs)."""
    nodes = {f"{n}:4222": f"127.0.0.1:{14222 + i}" for i, n in enumerate(COMPOSE_NODES)}
    specs = compose_services(COMPOSE, env=compose_env, addresses=nodes, data_root=tmp_path / "vol")
    urls = "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224"
    hive = specs["hive"]
    assert hive.command == [
        "hive",
        "materialize",
        "--nats",
        urls,
        "--db",
        str(tmp_path / "vol" / "hive-data" / "hive.duckdb"),
    ]
    assert hive.environment["HIVE_NATS_CREDENTIALS"] == str(creds_dir / "materializer.json")
    assert hive.environment["HIVE_NATS_URL"] == urls
    assert hive.healthcheck is not None and urls in hive.healthcheck
    assert hive.depends_on == {"nats": "service_healthy"}
    r = specs["researcher"]
    assert r.environment["HIVE_AGENT_POOL"] == str(creds_dir / "agents-researcher.json")
    assert "--nats" in r.command and r.command[r.command.index("--nats") + 1] == urls
    d = specs["distiller"]
    assert d.command[:2] == ["hive", "distill"]
    assert "--every-traces" in d.command and "--steps" in d.command
    assert d.environment["HIVE_SIGNING_KEY"] == str(creds_dir / "distiller.key")
    streams.load_private_key(d.environment["HIVE_SIGNING_KEY"])
    assert auth.load_pool(r.environment["HIVE_AGENT_POOL"], "researcher")


def test_credentials_command(tmp_path: Path) -> None:
    """`hive credentials` (the installed entry point) writes the pool, the service files, auth.conf,
    the model-signing key pair and .env (no secrets in it, the public key as HIVE_MODEL_PUBKEY, every
    NATS node as HIVE_NATS_URL), keeps the directory out of git, refuses to overwrite without --force
    (which keeps the signing key), checks its options."""
    out = tmp_path / "c"
    res = hive_cli(
        "credentials", "--out", str(out), "--agents", "2", "--types", "researcher,critic", "--rounds", "4"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    names = {p.name for p in out.iterdir()}
    assert names >= {
        "admin.json",
        "materializer.json",
        "distiller.json",
        "agents-researcher.json",
        "agents-critic.json",
        "auth.conf",
        "distiller.key",
        "distiller.pub",
        ".env",
        ".gitignore",
        "tls",
    }
    assert (out / ".gitignore").read_text().strip().endswith("*")
    assert out.stat().st_mode & 0o077 == 0
    assert (out / "distiller.key").stat().st_mode & 0o077 == 0
    env = read_env_file(out / ".env")
    assert env["HIVE_CREDENTIALS_DIR"] == str(out.absolute())
    assert env["HIVE_NATS_URL"] == "nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222"
    compose_default = yaml.safe_load(COMPOSE.read_text())["x-hive-env"]["HIVE_NATS_URL"]
    assert compose_default == f"${{HIVE_NATS_URL:-{env['HIVE_NATS_URL']}}}", "same nodes as compose's default"
    private = streams.load_private_key(out / "distiller.key")
    pinned = streams.load_public_key(env["HIVE_MODEL_PUBKEY"])
    streams.verify(pinned, b"pointer", streams.sign(private, b"pointer"))
    key_bytes = (out / "distiller.key").read_bytes()
    assert key_bytes.decode() not in (out / ".env").read_text()
    pool = auth.load_pool(out / "agents-critic.json")
    assert [c.user for c in pool] == ["agent-critic-01", "agent-critic-02"]
    for c in pool:
        assert c.password.get_secret_value() not in (out / ".env").read_text()
        assert c.password.get_secret_value() not in (out / "auth.conf").read_text()
    again = hive_cli("credentials", "--out", str(out))
    assert again.returncode != 0 and "--force" in again.stderr
    forced = hive_cli("credentials", "--out", str(out), "--force", "--rounds", "4")
    assert forced.returncode == 0 and "kept" in forced.stdout
    assert (out / "distiller.key").read_bytes() == key_bytes, "--force keeps the signing key"
    assert read_env_file(out / ".env")["HIVE_MODEL_PUBKEY"] == env["HIVE_MODEL_PUBKEY"]
    bad = hive_cli("credentials", "--out", str(tmp_path / "d"), "--types", "bad.type")
    assert bad.returncode != 0 and "subject token" in bad.stderr
    lone = hive_cli("credentials", "--out", str(tmp_path / "e"), "--tls-cert", str(out / "auth.conf"))
    assert lone.returncode != 0 and "--tls-key" in lone.stderr


# --------------------------------------------------------------------------- the NATS config itself
def local_nats_config(
    text: str, *, store_dir: Path, ports_dir: Path, route_port: int = 0, routes: list[int] | None = None
) -> str:
    """``docker/nats.conf`` moved to loopback: random client and monitoring ports, a temporary store,
    and the cluster's route listener and routes on the given loopback ports."""
    text, n1 = re.subn(r"(?m)^listen:.*$", "listen: 127.0.0.1:-1", text)
    text, n2 = re.subn(r"(?m)^http:.*$", f'http: 127.0.0.1:-1\nports_file_dir: "{ports_dir}"', text)
    text, n3 = re.subn(r"(?m)^(\s*)store_dir:.*$", rf'\1store_dir: "{store_dir}"', text)
    assert (n1, n2, n3) == (1, 1, 1), "docker/nats.conf must have one listen, http and store_dir line"
    route_list = "\n".join(f"    nats-route://127.0.0.1:{p}" for p in routes or [])
    text, n4 = re.subn(
        r"(?ms)^cluster \{.*?^\}",
        f"cluster {{\n  name: hive\n  listen: 127.0.0.1:{route_port or -1}\n"
        f"  routes: [\n{route_list}\n  ]\n}}",
        text,
    )
    assert n4 == 1, "docker/nats.conf must have one cluster block"
    return text


COMPOSE_NODES = {"nats": "nats-1", "nats-2": "nats-2", "nats-3": "nats-3"}
"""The compose NATS services and the server names compose gives them (NATS_SERVER_NAME)."""


def _start_node(conf: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [streams.find_nats_server(), "-c", str(conf), "-l", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


def _ports(proc: subprocess.Popen[bytes], ports_dir: Path) -> dict[str, list[str]]:
    ports_file = ports_dir / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + 15
    ports: dict[str, list[str]] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ports = json.loads(ports_file.read_text())
            if ports.get("nats") and ports.get("monitoring"):
                return ports
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() is not None else ""
    raise AssertionError(f"nats-server did not start: {err}")


def _stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def compose_nats(creds_dir: Path, tmp_path: Path, compose_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The compose NATS cluster: three nats-servers running docker/nats.conf + the generated
    auth.conf, each with its compose environment (NATS_SERVER_NAME, HIVE_NATS_SYNC), routed to
    each other on loopback; yields (the client URL list, node 1's monitor URL) once healthy."""
    specs = compose_services(COMPOSE, env=compose_env)
    routes = [streams.free_port() for _ in COMPOSE_NODES]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls, monitors = [], []
        for i, service in enumerate(COMPOSE_NODES):
            node_dir = tmp_path / service
            node_dir.mkdir()
            # beside auth.conf, so `include ./auth.conf` resolves as in the container
            conf = creds_dir / f"{service}.conf"
            conf.write_text(
                local_nats_config(
                    NATS_CONF.read_text(),
                    store_dir=node_dir / "js",
                    ports_dir=node_dir,
                    route_port=routes[i],
                    routes=routes,
                )
            )
            proc = _start_node(conf, node_dir / "nats.log", specs[service].environment)
            procs.append(proc)
            ports = _ports(proc, node_dir)
            urls.append(ports["nats"][0])
            monitors.append(ports["monitoring"][0])
        deadline = time.monotonic() + 60
        while not all(_healthz(m) for m in monitors):
            assert time.monotonic() < deadline, "the compose NATS cluster never became healthy"
            time.sleep(0.2)
        yield ",".join(urls), monitors[0]
    finally:
        _stop_nodes(procs)


def test_compose_runs_a_three_node_nats_cluster(compose_env: dict[str, str]) -> None:
    """The default compose file runs three NATS nodes from one config, each with its own server
    name and JetStream volume, the fsync policy selectable (HIVE_NATS_SYNC, default 120s), and the
    services' URL list names every node."""
    model = load_compose(COMPOSE, env={k: v for k, v in compose_env.items() if k != "HIVE_NATS_URL"})
    svcs = model["services"]
    nodes = {n: svcs[n] for n in COMPOSE_NODES}
    assert {s["environment"]["NATS_SERVER_NAME"] for s in nodes.values()} == set(COMPOSE_NODES.values())
    assert {s["environment"]["HIVE_NATS_SYNC"] for s in nodes.values()} == {"120s"}
    stores = {next(v for v in s["volumes"] if v.endswith(":/data")) for s in nodes.values()}
    assert len(stores) == 3, "each node keeps its own JetStream store"
    assert all(s["command"] == ["nats-server", "--config", "/etc/nats/nats.conf"] for s in nodes.values())
    assert [n for n, s in nodes.items() if s.get("ports")] == ["nats"], "only one node is published"
    assert model["x-hive-env"]["HIVE_NATS_URL"] == ",".join(f"nats://{n}:4222" for n in COMPOSE_NODES)
    conf = NATS_CONF.read_text()
    assert "server_name: $NATS_SERVER_NAME" in conf and "sync_interval: $HIVE_NATS_SYNC" in conf
    for n in COMPOSE_NODES:
        assert f"nats-route://{n}:6222" in conf
    always = load_compose(COMPOSE, env={**compose_env, "HIVE_NATS_SYNC": "always"})["services"]
    assert {always[n]["environment"]["HIVE_NATS_SYNC"] for n in COMPOSE_NODES} == {"always"}


def test_compose_nats_sync_always_is_selectable(
    creds_dir: Path, compose_env: dict[str, str], tmp_path: Path
) -> None:
    """HIVE_NATS_SYNC=always reaches the server through docker/nats.conf: /varz reports
    sync_always (fsync before every ack)."""
    env = compose_services(COMPOSE, env={**compose_env, "HIVE_NATS_SYNC": "always"})["nats"].environment
    conf = creds_dir / "nats-always.conf"
    own, absent = streams.free_port(), streams.free_port()  # a cluster node needs a route to try
    conf.write_text(
        local_nats_config(
            NATS_CONF.read_text(),
            store_dir=tmp_path / "js",
            ports_dir=tmp_path,
            route_port=own,
            routes=[own, absent],
        )
    )
    proc = _start_node(conf, tmp_path / "nats.log", env)
    try:
        monitor = _ports(proc, tmp_path)["monitoring"][0]
        with urllib.request.urlopen(f"{monitor}/varz", timeout=5) as r:
            varz = json.loads(r.read())
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert varz["server_name"] == "nats-1"
    finally:
        _stop_nodes([proc])


async def test_compose_nats_config_runs_and_materializer_provisions(
    compose_nats: tuple[str, str], creds_dir: Path
) -> None:
    """docker/nats.conf + auth.conf start a real 3-node cluster: /healthz is ok, /varz states the
    2-minute sync interval and auth; the materializer role provisions HIVE (R3) and the claims
    bucket; an agent replica claims an identity from its pool and publishes its own trace; no
    login, no entry."""
    import nats.errors

    url, monitor = compose_nats
    with urllib.request.urlopen(f"{monitor}/healthz", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"
    with urllib.request.urlopen(f"{monitor}/varz", timeout=5) as r:
        varz = json.loads(r.read())
    assert varz["jetstream"]["config"]["sync_interval"] == 120_000_000_000
    assert varz["auth_required"] is True

    mat = await streams.connect(
        url, **auth.connect_options_from_env({auth.ENV_CREDENTIALS: str(creds_dir / "materializer.json")})
    )
    try:
        js = mat.jetstream()
        await streams.ensure_stream(js)
        await auth.ensure_agent_buckets(js)
        info = await js.stream_info(streams.STREAM)
        assert info.config.subjects == streams.STREAM_SUBJECTS
        assert info.config.num_replicas == 3, "compose runs the stream replicated on all three nodes"
    finally:
        await mat.close()

    claim = await auth.claim_identity(url, creds_dir / "agents-researcher.json", "researcher", timeout_s=10)
    agent = await streams.connect(url, **auth.connect_options(claim.credentials))
    try:
        ack = await agent.jetstream().publish(f"hive.traces.researcher.{claim.agent_id}", b"{}", timeout=5)
        assert ack.stream == streams.STREAM
        await auth.release_claim(agent, claim)
    finally:
        await agent.close()
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
        await streams.connect(url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2)


# --------------------------------------------------------------------------- the swarm, emulated
EMULATION_TIMEOUT_S = 150.0
"""Budget of the emulation test from the first service start to the last check, on an idle machine
(it needs ~60-100 s on two free cores)."""
EMULATION_MAX_TIMEOUT_S = 600.0


def emulation_budget_s() -> float:
    """:data:`EMULATION_TIMEOUT_S` scaled by how busy the machine is (the 1-minute load average per
    core, at least 1): the distiller's training is CPU-bound and shares the cores with whatever else
    runs, so under a load of 3 per core it gets about a third of them. At most
    :data:`EMULATION_MAX_TIMEOUT_S`."""
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(EMULATION_MAX_TIMEOUT_S, EMULATION_TIMEOUT_S * max(1.0, per_core))


EMULATION_VARS = {
    # Compose variables the test sets (documented in docker/README.md): a CPU-light task so two
    # cores can train while the agents run, and a short, small-batch distillation round.
    "HIVE_TASK": "sleep/0",
    "HIVE_DISTILL_EVERY": "40",
    "HIVE_DISTILL_STEPS": "60",
    "HIVE_DISTILL_BATCH_SIZE": "16",
    "HIVE_DISTILL_THREADS": "1",
    # The history backend's gate needs held-out instances of a task with a true objective (sleep/0
    # has neither, so it rejects every candidate); the byte policy's gate judges held-out loss.
    "HIVE_DISTILL_BACKEND": "byte",
    "HIVE_LOG_LEVEL": "info",
}
EMULATION_SCALE = {"hive": 1, "distiller": 1, "researcher": 2, "deployer": 1, "analyst": 1}
"""Replicas per service (``docker compose up --scale researcher=2``); ``nats`` is the fixture."""


@dataclass
class LocalProcess:
    """One replica of a compose service, running as a local process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_grace_s: float = 10.0

    def tail(self, n: int = 1500) -> str:
        """The last ``n`` characters of its output."""
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class LocalCompose:
    """``docker compose up`` without Docker: each service's own command and environment (from
    :func:`compose_services`) as local processes, started in ``depends_on`` order, waiting for
    ``service_healthy`` dependencies with the services' own health checks; stopped by PID."""

    def __init__(self, specs: Mapping[str, ServiceSpec], workdir: Path, healthy: Mapping[str, Any]) -> None:
        self.specs = specs
        self.workdir = workdir
        self.procs: list[LocalProcess] = []
        self._healthy = dict(healthy)
        """service → a zero-argument callable returning True once healthy (``nats`` is the fixture)."""
        self._seen_healthy: set[str] = set()
        # The image's environment (Dockerfile ENV) instead of this test runner's HIVE_* settings.
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
        self.base_env.update(
            {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HIVE_LOG_FORMAT": "json"}
        )

    @staticmethod
    def argv(command: list[str]) -> list[str]:
        """The container command with the ``hive`` entry point run by this interpreter."""
        assert command and command[0] == "hive", f"not a hive command: {command}"
        return [sys.executable, "-m", "hive", *command[1:]]

    def env(self, spec: ServiceSpec) -> dict[str, str]:
        """The process environment: the image's plus the service's ``environment``."""
        return {**self.base_env, **spec.environment}

    def start(self, name: str, replica: int = 1) -> LocalProcess:
        """Start one replica of ``name`` in its own working directory (the image's /data)."""
        spec = self.specs[name]
        cwd = self.workdir / f"{name}-{replica}"
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}-{replica}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(spec.command),
                cwd=cwd,
                env=self.env(spec),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        p = LocalProcess(f"{name}-{replica}", proc, log, spec.stop_grace_s)
        self.procs.append(p)
        return p

    async def _check(self, name: str, replica: int | None = None) -> bool:
        """One run of the service's health check (compose's ``healthcheck.test``), inside
        ``replica``'s container (its working directory) when given."""
        if name in self._healthy:
            return bool(await asyncio.to_thread(self._healthy[name]))
        spec = self.specs[name]
        assert spec.healthcheck, f"{name} has no health check to wait for"
        proc = await asyncio.create_subprocess_exec(
            *self.argv(spec.healthcheck),
            cwd=self.workdir / f"{name}-{replica}" if replica is not None else None,
            env=self.env(spec),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await asyncio.wait_for(proc.wait(), 30) == 0
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False

    async def wait_healthy(self, name: str, deadline: float) -> None:
        """Retry ``name``'s health check until it passes (or fail at ``deadline``)."""
        while name not in self._seen_healthy:
            if await self._check(name):
                self._seen_healthy.add(name)
                return
            dead = [p for p in self.procs if p.proc.poll() is not None]
            assert not dead, f"{dead[0].name} exited with {dead[0].proc.returncode}:\n{dead[0].tail()}"
            assert time.monotonic() < deadline, f"{name} never became healthy:\n{self.tails()}"
            await asyncio.sleep(1.0)

    async def up(self, scale: Mapping[str, int], deadline: float) -> None:
        """Start ``scale[name]`` replicas of each service once its dependencies are ready."""
        started: set[str] = set(self._healthy)
        pending = [n for n in scale if n not in started]
        while pending:
            ready = [n for n in pending if set(self.specs[n].depends_on) <= started]
            assert ready, f"depends_on cycle or unknown dependency among {pending}"
            for name in ready:
                for dep, condition in self.specs[name].depends_on.items():
                    if condition == "service_healthy":
                        await self.wait_healthy(dep, deadline)
                for i in range(1, scale[name] + 1):
                    self.start(name, i)
                started.add(name)
                pending.remove(name)

    def stop_all(self) -> None:
        """As ``docker compose down``: SIGTERM (agents first, the materializer last), SIGKILL
        what outlives its service's ``stop_grace_period``."""
        last = ("distiller-", "hive-")
        agents = [p for p in self.procs if not p.name.startswith(last)]
        for group in (agents, *([p for p in self.procs if p.name.startswith(x)] for x in last)):
            for p in group:
                if p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + max((p.stop_grace_s for p in group), default=0.0)
            for p in group:
                try:
                    p.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    p.proc.wait()

    def tails(self, n: int = 1500) -> str:
        """Every process's last output, for failure messages."""
        return "\n".join(f"--- {p.name} (rc {p.proc.poll()}):\n{p.tail(n)}" for p in self.procs)


@pytest.fixture
def local_compose(tmp_path: Path) -> Iterator[list[LocalCompose]]:
    """A holder for the test's :class:`LocalCompose`; every process it started is stopped by PID
    at teardown, whatever happened."""
    holder: list[LocalCompose] = []
    try:
        yield holder
    finally:
        for swarm in holder:
            swarm.stop_all()


def _healthz(monitor: str) -> bool:
    try:
        with urllib.request.urlopen(f"{monitor}/healthz", timeout=3) as r:
            return bool(json.loads(r.read()).get("status") == "ok")
    except OSError:
        return False


@pytest.mark.timeout(int(EMULATION_MAX_TIMEOUT_S) + 120)  # its budget follows the load, plus setup
async def test_compose_swarm_runs_as_local_processes(
    compose_nats: tuple[str, str],
    creds_dir: Path,
    compose_env: dict[str, str],
    tmp_path: Path,
    local_compose: list[LocalCompose],
) -> None:
    """The compose services' own commands and environments, run locally against docker/nats.conf
    with generated auth: both `researcher` replicas claim distinct pool identities and their traces
    reach DuckDB; the distiller (signing key from its secret) publishes a model that the agents
    (pinning HIVE_MODEL_PUBKEY from .env) load and use: experiments with model_version >= 1; the
    distiller's and the agents' own health checks (heartbeat age) pass."""
    url, monitor = compose_nats
    env = {**compose_env, **EMULATION_VARS}
    nodes = {f"{n}:4222": u.split("://", 1)[1] for n, u in zip(COMPOSE_NODES, url.split(","), strict=True)}
    specs = compose_services(
        COMPOSE,
        env=env,
        addresses=nodes,
        data_root=tmp_path / "volumes",
    )
    swarm = LocalCompose(specs, tmp_path / "run", healthy={"nats": lambda: _healthz(monitor)})
    local_compose.append(swarm)
    t0 = time.monotonic()
    budget = emulation_budget_s()
    deadline = t0 + budget
    await swarm.up(EMULATION_SCALE, deadline)
    t_up = time.monotonic() - t0

    admin = await streams.connect(
        url, name="emulation-admin", **auth.connect_options(creds_dir / "admin.json")
    )
    pool = {c.agent_id for c in auth.load_pool(creds_dir / "agents-researcher.json")}
    marks: dict[str, float] = {}

    async def rows(sql: str) -> list[list[Any]]:
        return (await streams.remote_query(admin, sql, timeout_s=10)).rows

    async def state() -> dict[str, Any]:
        return {
            "researchers": dict(
                (r[0], r[1])
                for r in await rows(
                    "SELECT agent_id, count(*) FROM experiments WHERE agent_type = 'researcher' GROUP BY ALL"
                )
            ),
            "published": [
                r[0] for r in await rows("SELECT version FROM models WHERE decision = 'published'")
            ],
            "models": await rows("SELECT decision, version, reason FROM models ORDER BY seq"),
            "with_model": dict(
                (r[0], r[1])
                for r in await rows(
                    "SELECT agent_type, count(*) FROM experiments WHERE model_version >= 1 GROUP BY ALL"
                )
            ),
            "successes": (
                await rows(
                    "SELECT (SELECT count(*) FROM experiments WHERE success) "
                    "+ (SELECT count(*) FROM deployments WHERE success)"
                )
            )[0][0],
        }

    last: dict[str, Any] = {}
    try:
        while True:
            try:
                last = await state()
            except streams.QueryError as e:
                last = {"error": str(e)}
            now = time.monotonic() - t0
            if len(last.get("researchers", {})) >= 2:
                marks.setdefault("researchers", now)
            if last.get("published"):
                marks.setdefault("published", now)
            if last.get("with_model", {}).get("researcher"):
                marks.setdefault("model_used", now)
            if "published" in marks and "model_used" in marks:
                break
            dead = [p for p in swarm.procs if p.proc.poll() is not None]
            assert not dead, f"{dead[0].name} exited with {dead[0].proc.returncode}:\n{swarm.tails()}"
            if time.monotonic() > deadline:
                distiller = next(p for p in swarm.procs if p.name.startswith("distiller-"))
                hint = (
                    "the distiller published no model in time (CPU-bound training?)"
                    if not last.get("published")
                    else "a model was published but no researcher trace carries it yet"
                )
                raise AssertionError(
                    f"{hint} (budget {budget:.0f}s); state {last}; marks {marks}\n"
                    f"--- distiller:\n{distiller.tail(4000)}"
                )
            await asyncio.sleep(1.0)

        # the scaled researchers: distinct identities, both from the type's pool
        assert set(last["researchers"]) <= pool and len(last["researchers"]) == 2, last
        deployers = {r[0] for r in await rows("SELECT DISTINCT agent_id FROM deployments")}
        assert deployers and deployers <= {
            c.agent_id for c in auth.load_pool(creds_dir / "agents-deployer.json")
        }
        analysts = {r[0] for r in await rows("SELECT agent_id FROM agents WHERE agent_type = 'analyst'")}
        assert len(analysts) == 1 and analysts <= {
            c.agent_id for c in auth.load_pool(creds_dir / "agents-analyst.json")
        }
        # the model: published by the distiller, signed with the key the agents pin
        ((version, signature, agent_id),) = await rows(
            "SELECT version, signature, agent_id FROM models WHERE decision = 'published' "
            "ORDER BY seq LIMIT 1"
        )
        assert version >= 1 and agent_id == "distiller" and signature
        store = await streams.ModelStore(admin).open()
        current = await store.read_pointer("policy")
        assert current is not None
        current[0].check(streams.load_public_key(env["HIVE_MODEL_PUBKEY"]))
        # every event was on its own subject (a strict decode would dead-letter anything else)
        assert (await rows("SELECT count(*) FROM dead_letters"))[0][0] == 0
        # the services' own health checks: their heartbeat files are fresh
        for name in HEARTBEAT_SERVICES:
            assert await swarm._check(name, replica=1), f"{name}'s health check failed:\n{swarm.tails()}"
    finally:
        await admin.close()
    print(f"emulation: services up in {t_up:.1f}s; milestones (s since start) {marks}; budget {budget:.0f}s")
