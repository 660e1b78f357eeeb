"""``hive credentials``: generate the NATS users of a locked-down swarm (compose or ``hive up --secure``).

Writes into ``--out`` (created ``0700``, every file ``0600``, and a ``.gitignore`` of ``*`` so the
directory never lands in git):

* ``admin.json``, ``materializer.json``, ``distiller.json`` — one :class:`streams._auth.Credentials`
  per service role;
* ``agents-<type>.json`` — the identity pool of each agent type (replicas claim from it);
* ``auth.conf`` — the nats-server ``authorization`` block (bcrypt hashes, per-role permissions,
  TLS when asked), included by ``docker/nats.conf``;
* ``distiller.key`` / ``distiller.pub`` — the Ed25519 model-signing key pair
  (:func:`streams.generate_keys`): the private key is mounted into the distiller only, the
  public key is pinned by every agent (``HIVE_MODEL_PUBKEY`` in ``.env``). An existing pair is
  kept, also with ``--force``: models already published stay verifiable;
* ``.env`` — compose variables (``docker compose --env-file <out>/.env up``);
* ``tls/`` — copies of the TLS files, mounted into the containers (empty without TLS).

:func:`write_swarm_credentials`, :func:`load_swarm_credentials` and :func:`ensure_signing_keys`
are shared with ``hive up --secure`` (which keeps its own directory under ``<data>/credentials``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

import streams
from streams import _auth

SERVER_TLS_DIR = "/etc/nats/tls"
"""Where the nats container sees ``<out>/tls`` (docker-compose.yml mounts it there)."""
CLIENT_TLS_DIR = "/etc/hive/tls"
"""Where the hive containers see ``<out>/tls``."""
CONTAINER_UID = 10001
"""The image's ``hive`` user; used when credentials are generated as root."""
KEY_NAME = "distiller"
"""Stem of the signing key files: ``distiller.key`` (private) and ``distiller.pub`` (public)."""
GITIGNORE = "# generated secrets: never commit\n*\n"
COMPOSE_NATS_NODES = ("nats", "nats-2", "nats-3")
"""The NATS cluster nodes of docker-compose.yml: every service gets all of them and fails over."""


def compose_nats_url(tls: bool) -> str:
    """``HIVE_NATS_URL`` for compose: every node of the cluster (``tls://`` with TLS)."""
    scheme = "tls" if tls else "nats"
    return ",".join(f"{scheme}://{node}:4222" for node in COMPOSE_NATS_NODES)


def signing_key_paths(out: Path) -> tuple[Path, Path]:
    """``(private, public)`` paths of the model-signing key pair in a credentials directory."""
    return Path(out) / f"{KEY_NAME}.key", Path(out) / f"{KEY_NAME}.pub"


def ensure_signing_keys(out: Path) -> tuple[Path, Path, bool]:
    """The Ed25519 model-signing key pair in ``out``: kept when both files exist, else made.

    Returns ``(private, public, created)``. A lone public key (its private half lost) is
    replaced; a lone private key gets its public key written back from it.
    """
    priv, pub = signing_key_paths(out)
    if priv.exists():
        if not pub.exists():
            import base64

            from cryptography.hazmat.primitives import serialization

            raw = (
                streams.load_private_key(priv)
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
            pub.write_text(base64.b64encode(raw).decode() + "\n")
        return priv, pub, False
    pub.unlink(missing_ok=True)
    priv, pub = streams.generate_keys(out, KEY_NAME)
    return priv, pub, True


def public_key_text(out: Path) -> str:
    """The base64 text of the public signing key in ``out`` (what ``HIVE_MODEL_PUBKEY`` holds)."""
    return signing_key_paths(out)[1].read_text().strip()


def write_swarm_credentials(
    out: Path,
    agents_per_type: int,
    types: Sequence[str],
    *,
    rounds: int = _auth.BCRYPT_ROUNDS,
    server_tls: _auth.TlsFiles | None = None,
    client_ca: str | None = None,
    host_ca: str | None = None,
) -> tuple[_auth.CredentialSet, list[Path]]:
    """New users for every role plus the signing keys in ``out`` (``0700``, files ``0600``, a
    ``.gitignore`` of ``*``); returns the credential set and the files written.

    ``client_ca`` is the CA path services verify the server with; the admin file, used from the
    host, names ``host_ca`` instead. An existing signing key pair is kept.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    (out / ".gitignore").write_text(GITIGNORE)
    cred_set = _auth.generate_credentials(agents_per_type, types, tls_ca_file=client_ca)
    cred_set.admin = cred_set.admin.model_copy(update={"tls_ca_file": host_ca})
    written = _auth.write_credentials(cred_set, out, rounds=rounds, tls=server_tls)
    priv, pub, _ = ensure_signing_keys(out)
    return cred_set, [*written, priv, pub]


def load_swarm_credentials(out: Path, needed: Mapping[str, int]) -> _auth.CredentialSet | None:
    """The credential set stored in ``out`` if it has every service role, ``auth.conf``, the
    signing keys and, per agent type of ``needed``, at least that many identities; else None."""
    out = Path(out)
    try:
        if not (out / _auth.AUTH_FILE).is_file() or not all(p.is_file() for p in signing_key_paths(out)):
            return None
        roles = {r: _auth.load_credentials(_auth.credentials_file(out, r)) for r in _auth.SERVICE_ROLES}
        pools = {}
        for t, n in needed.items():
            idents = _auth.load_pool(_auth.pool_file(out, t), t)
            if len(idents) < max(1, n):
                return None
            pools[t] = _auth.AgentPool(agent_type=t, identities=tuple(idents))
    except _auth.AuthError:
        return None
    return _auth.CredentialSet(roles["admin"], roles["materializer"], roles["distiller"], pools)


def render_env(
    *,
    credentials_dir: Path,
    uid: int,
    agents_per_type: int,
    agent_types: list[str],
    tls: bool,
    model_pubkey: str = "",
) -> str:
    """The ``.env`` file compose reads (paths, ids and the *public* signing key; no secrets)."""
    return (
        "# Generated by `hive credentials`. Use: docker compose --env-file <this file> up\n"
        "# (or copy it to .env beside docker-compose.yml). No secrets here: they are in the\n"
        "# JSON files of HIVE_CREDENTIALS_DIR, mounted into the containers as compose secrets.\n"
        f"HIVE_CREDENTIALS_DIR={credentials_dir}\n"
        f"HIVE_UID={uid}\n"
        "# Every node of the NATS cluster: a service fails over when the one it uses dies.\n"
        f"HIVE_NATS_URL={compose_nats_url(tls)}\n"
        f"HIVE_AGENTS_PER_TYPE={agents_per_type}\n"
        f"# agent types with a pool: {','.join(agent_types)} (scale each to at most {agents_per_type})\n"
        "# Public half of distiller.key: agents accept only models signed with it.\n"
        f"HIVE_MODEL_PUBKEY={model_pubkey}\n"
    )


def _types(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    if not types:
        raise click.BadParameter("give at least one agent type")
    if len(set(types)) != len(types):
        raise click.BadParameter("agent types must be distinct")
    return types


@click.command("credentials")
@click.option(
    "--out",
    "out",
    default="./credentials",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write (kept out of git).",
)
@click.option(
    "--agents",
    "n",
    default=8,
    show_default=True,
    type=click.IntRange(1, 999),
    help="Identities per agent type = the most replicas of that type that can run at once.",
)
@click.option(
    "--types",
    "types",
    default=",".join(_auth.DEFAULT_AGENT_TYPES),
    show_default=True,
    callback=_types,
    help="Comma-separated agent types to make pools for.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Server certificate (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Server private key (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA that signed the server certificate; clients verify with it (default: system CAs).",
)
@click.option(
    "--rounds",
    default=_auth.BCRYPT_ROUNDS,
    show_default=True,
    type=click.IntRange(4, 16),
    help="bcrypt cost of the server-side hashes.",
)
@click.option("--force", is_flag=True, help="Overwrite existing credentials (running services must restart).")
def credentials(
    out: Path,
    n: int,
    types: list[str],
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    rounds: int,
    force: bool,
) -> None:
    """Generate NATS users for every role: admin, materializer, distiller and a pool of agent identities.

    Each agent identity (researcher-01, ...) may publish only its own traces and lifecycle
    events; a replica claims a free one at start. Also makes the distiller's model-signing key
    pair (kept if present; agents pin its public half). Run once, then
    'docker compose --env-file OUT/.env up --scale researcher=N' with N up to --agents.
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-ca needs --tls-cert and --tls-key")
    out = out.absolute()
    if (out / _auth.AUTH_FILE).exists() and not force:
        raise click.ClickException(f"{out} already holds credentials; pass --force to replace them")
    try:
        for t in types:
            _auth.agent_ids(t, 1)
    except _auth.AuthError as e:
        raise click.BadParameter(str(e), param_hint="--types") from None

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    (out / ".gitignore").write_text(GITIGNORE)
    tls_dir = out / "tls"
    tls_dir.mkdir(exist_ok=True)
    server_tls: _auth.TlsFiles | None = None
    client_ca: str | None = None
    host_ca: str | None = None
    if tls_cert is not None and tls_key is not None:
        shutil.copyfile(tls_cert, tls_dir / "server.crt")
        shutil.copyfile(tls_key, tls_dir / "server.key")
        os.chmod(tls_dir / "server.key", 0o600)
        server_tls = _auth.TlsFiles(f"{SERVER_TLS_DIR}/server.crt", f"{SERVER_TLS_DIR}/server.key")
        if tls_ca is not None:
            shutil.copyfile(tls_ca, tls_dir / "ca.pem")
            client_ca, host_ca = f"{CLIENT_TLS_DIR}/ca.pem", str(tls_dir / "ca.pem")

    had_key = signing_key_paths(out)[0].exists()
    # The admin file is used from the host (hive status/query), so it names the host's CA path.
    _, written = write_swarm_credentials(
        out, n, types, rounds=rounds, server_tls=server_tls, client_ca=client_ca, host_ca=host_ca
    )

    uid = os.getuid()
    if uid == 0:  # containers never run as root: hand the files to the image's user
        uid = CONTAINER_UID
        for p in [out, tls_dir, *written, *tls_dir.iterdir()]:
            os.chown(p, CONTAINER_UID, 0)
    env = out / _auth.ENV_FILE
    env.write_text(
        render_env(
            credentials_dir=out,
            uid=uid,
            agents_per_type=n,
            agent_types=types,
            tls=server_tls is not None,
            model_pubkey=public_key_text(out),
        )
    )
    click.echo(f"wrote {len(written)} credential files, {env.name} and tls/ to {out}")
    click.echo(
        f"  model signing key: {signing_key_paths(out)[0].name} "
        f"({'kept' if had_key else 'new'}; its public half is HIVE_MODEL_PUBKEY in {env.name})"
    )
    click.echo(f"  pools: {', '.join(f'{t} x{n}' for t in types)}; TLS: {'on' if server_tls else 'off'}")
    click.echo(f"  run:   docker compose --env-file {env} up -d --scale researcher={min(n, 8)}")
    click.echo(
        f"  query: HIVE_NATS_URL=nats://127.0.0.1:4222 {_auth.ENV_CREDENTIALS}={out / 'admin.json'} "
        "hive query 'select count(*) from experiments'"
    )
