"""Who may do what on the hive's NATS: roles, credentials, the server's auth config, identity claims.

Roles (one NATS user each; every user has its own inbox prefix ``_INBOX_<user>`` and may
subscribe only below it, so nobody reads another's replies or JetStream acks):

* ``admin`` — the operator (``hive status``/``hive query``/tests): publishes anywhere, reads the
  log subjects, its own inboxes (``_INBOX_admin`` and the plain ``_INBOX`` of generic tools).
* ``materializer`` — the only consumer that *serves*: creates/updates the ``HIVE`` stream and the
  claims buckets (:func:`ensure_agent_buckets`), pulls ``HIVE``, answers ``hive.query.>``
  (replies through ``allow_responses``).
* ``distiller`` — the only writer of the model buckets (Object Store ``hive_models``, KV
  ``hive_pointer``) and of ``hive.models.>`` events; reads ``HIVE`` and asks queries.
* ``agent-<agent_id>`` — one per agent identity: publishes only ``hive.traces.<type>.<id>`` and
  ``hive.agents.<id>.>``, its own key in the identity-claims bucket, run claims; reads models,
  pointer and the log (read-only consumers), asks queries. Never creates, updates, purges or
  deletes a stream, and creates no consumer on a stream whose content it writes (the claims
  buckets): a push consumer's deliver subject is captured by a stream listening on it, which
  would let it relay chosen bytes into ``HIVE`` under any subject.

Replicas of a scaled compose service are identical, so identities come from a *pool* per agent
type (``researcher-01`` … ``researcher-NN``); a replica claims a free one at start with
:func:`claim_identity` (``kv.create`` of its own key in the ``hive_claims`` KV bucket, which
only that identity may write; a taken key fails, so it tries the next). A claim lives
:data:`CLAIM_TTL_S` seconds unless renewed (:func:`renew_claim`); a dead replica's identity is
free again after that.

Trust boundary: a replica holds the pool file of its own type, so a *malicious* replica could
log in as a sibling of the same type; the server still binds every trace subject to the
identity that published it, no agent can write another type's traces, models, pointer or
stream configuration, and two honest replicas never share an identity.

The config renderer is pure (:func:`render_auth_config` takes password *hashes*);
:func:`generate_credentials` and :func:`hash_password` make the secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_serializer, field_validator

from ._subjects import MODEL_BUCKET, POINTER_BUCKET, STREAM

Role = Literal["admin", "materializer", "distiller", "agent"]
SERVICE_ROLES: tuple[Role, ...] = ("admin", "materializer", "distiller")
"""The roles with exactly one user each (agents come in pools)."""
DEFAULT_AGENT_TYPES = ("researcher", "deployer", "analyst")
CLAIMS_BUCKET = "hive_claims"
"""KV bucket of identity claims: key = agent id, value = who holds it (JSON)."""
CLAIM_TTL_S = 60.0
"""A claim not renewed within this many seconds expires and frees the identity."""
RUN_CLAIMS_BUCKET = "hive_run_claims"
"""KV bucket where agents claim (task, recipe) runs (``agents._claims``; any agent writes any key)."""
RUN_CLAIM_TTL_S = 3600.0
"""TTL of run claims (must match ``agents._claims.CLAIM_TTL_S``)."""
CAMPAIGN_BUCKET = "hive_campaigns"
"""KV bucket of campaign budgets: experiments used per task instance (``agents._campaign``; CAS counters)."""
BCRYPT_ROUNDS = 11
"""bcrypt cost of the server-side password hashes (the ``nats server passwd`` default)."""
AUTH_FILE = "auth.conf"
ENV_FILE = ".env"
ENV_CREDENTIALS = "HIVE_NATS_CREDENTIALS"
"""Environment variable naming a :class:`Credentials` JSON file to connect with."""
ENV_POOL = "HIVE_AGENT_POOL"
"""Environment variable naming an agent pool JSON file (:func:`claim_identity`)."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OBJ_STREAM = f"OBJ_{MODEL_BUCKET}"
_PTR_STREAM = f"KV_{POINTER_BUCKET}"
_CLAIMS_STREAM = f"KV_{CLAIMS_BUCKET}"
_RUN_CLAIMS_STREAM = f"KV_{RUN_CLAIMS_BUCKET}"
_CAMPAIGN_STREAM = f"KV_{CAMPAIGN_BUCKET}"
_API = "$JS.API"


class AuthError(ValueError):
    """Bad input to the credential tools (an invalid name, a missing or malformed file)."""


class ClaimError(RuntimeError):
    """No identity of the pool could be claimed (all taken, none accepted, or timed out)."""


class ClaimLost(ClaimError):
    """A held claim expired and another replica took the identity: stop publishing as it."""


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise AuthError(f"{what} {value!r}: use 1-64 of A-Z a-z 0-9 _ - (it becomes a subject token)")
    return value


def inbox_prefix_for(user: str) -> str:
    """The private inbox prefix of ``user`` (``_INBOX_<user>``): only that user may subscribe below it."""
    return f"_INBOX_{user}"


def agent_user(agent_id: str) -> str:
    """The NATS user name of an agent identity (``agent-<agent_id>``)."""
    return f"agent-{_token(agent_id, 'agent id')}"


def agent_ids(agent_type: str, n: int) -> list[str]:
    """The ``n`` identities of a pool: ``<type>-01`` … (zero-padded to at least two digits)."""
    _token(agent_type, "agent type")
    width = max(2, len(str(n)))
    return [f"{agent_type}-{i:0{width}d}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------- permissions
class Permissions(BaseModel):
    """A NATS user's permissions: allow lists (anything not listed is denied)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May publish one reply to the reply subject of each request it received (query service)."""


def _get_stream(stream: str) -> list[str]:
    """Publish rights to read single messages of ``stream`` (info, message get, direct get)."""
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.STREAM.MSG.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
    ]


def _read_stream(stream: str) -> list[str]:
    """Publish rights to read ``stream``: single messages and consumers (no stream admin ops).

    Consumer rights let the holder choose a push consumer's deliver subject, and a JetStream
    delivery onto a subject another stream captures is stored there (with the original
    subject). So a role gets consumers only on streams whose content it cannot choose, or
    that it owns: agents get no consumers on the claims bucket they write.
    """
    return [
        *_get_stream(stream),
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.DELETE.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _manage_stream(stream: str) -> list[str]:
    """Publish rights to create and update ``stream`` (not delete)."""
    return [f"{_API}.STREAM.CREATE.{stream}", f"{_API}.STREAM.UPDATE.{stream}"]


_JS_INFO = [f"{_API}.INFO", f"{_API}.STREAM.INFO.*", f"{_API}.STREAM.NAMES", f"{_API}.STREAM.LIST"]
"""Read-only JetStream metadata every role may ask for."""


def admin_permissions() -> Permissions:
    """The operator: publish anything (stream management included); subscribe to its inboxes and the log."""
    return Permissions(
        publish=(">",),
        subscribe=(
            f"{inbox_prefix_for('admin')}.>",
            "_INBOX.>",
            "hive.traces.>",
            "hive.agents.>",
            "hive.models.>",
        ),
    )


def materializer_permissions() -> Permissions:
    """Provision and read ``HIVE``, provision the claims bucket, answer ``hive.query.>``."""
    return Permissions(
        publish=(
            *_JS_INFO,
            *_manage_stream(STREAM),
            *_read_stream(STREAM),
            *_manage_stream(_CLAIMS_STREAM),
            *_get_stream(_CLAIMS_STREAM),
            *_manage_stream(_RUN_CLAIMS_STREAM),
            *_get_stream(_RUN_CLAIMS_STREAM),
            *_manage_stream(_CAMPAIGN_STREAM),
            *_get_stream(_CAMPAIGN_STREAM),
            "hive.query.>",  # its own health check asks its own status
        ),
        subscribe=(f"{inbox_prefix_for('materializer')}.>", "hive.query.>"),
        allow_responses=True,
    )


def distiller_permissions() -> Permissions:
    """Write the model Object Store, the pointer KV and ``hive.models.>``; read ``HIVE``; ask queries."""
    return Permissions(
        publish=(
            *_JS_INFO,
            *_read_stream(STREAM),
            "hive.models.>",
            "hive.query.>",
            *_manage_stream(_OBJ_STREAM),
            *_read_stream(_OBJ_STREAM),
            f"{_API}.STREAM.PURGE.{_OBJ_STREAM}",  # replacing an object purges its old chunks
            f"$O.{MODEL_BUCKET}.>",
            *_manage_stream(_PTR_STREAM),
            *_read_stream(_PTR_STREAM),
            f"$KV.{POINTER_BUCKET}.>",
        ),
        subscribe=(f"{inbox_prefix_for('distiller')}.>",),
    )


def agent_permissions(agent_type: str, agent_id: str) -> Permissions:
    """Publish its own traces/lifecycle, its identity claim key and run claims; read log, models and
    pointer; ask queries."""
    _token(agent_type, "agent type")
    _token(agent_id, "agent id")
    return Permissions(
        publish=(
            f"hive.traces.{agent_type}.{agent_id}",
            f"hive.agents.{agent_id}.>",
            "hive.query.>",
            *_JS_INFO,
            *_read_stream(STREAM),
            *_read_stream(_OBJ_STREAM),
            *_read_stream(_PTR_STREAM),
            *_get_stream(_CLAIMS_STREAM),  # no consumers: it writes this bucket's content
            f"$KV.{CLAIMS_BUCKET}.{agent_id}",
            *_get_stream(_RUN_CLAIMS_STREAM),  # no consumers either, same reason
            f"$KV.{RUN_CLAIMS_BUCKET}.>",
            *_get_stream(_CAMPAIGN_STREAM),  # campaign budgets: compare-and-swap counters
            f"$KV.{CAMPAIGN_BUCKET}.>",
        ),
        subscribe=(f"{inbox_prefix_for(agent_user(agent_id))}.>",),
    )


# --------------------------------------------------------------------------- credentials
class Credentials(BaseModel):
    """What one client needs to connect as one user (a JSON file in the credentials directory).

    ``password`` is a :class:`~pydantic.SecretStr` (hidden in reprs and logs) but is written in
    clear by :meth:`model_dump_json`: the file is the secret, keep it ``0600`` and out of git.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    user: str
    password: SecretStr
    inbox_prefix: str
    agent_id: str | None = None
    agent_type: str | None = None
    tls_ca_file: str | None = None
    """CA bundle to verify the server's certificate with (set when the server uses TLS)."""

    @field_validator("user")
    @classmethod
    def _user_token(cls, v: str) -> str:
        return _token(v, "user")

    @field_serializer("password", when_used="json")
    def _reveal(self, v: SecretStr) -> str:
        return v.get_secret_value()

    def permissions(self) -> Permissions:
        """The server-side permissions of this user."""
        if self.role == "agent":
            assert self.agent_type and self.agent_id
            return agent_permissions(self.agent_type, self.agent_id)
        return {
            "admin": admin_permissions,
            "materializer": materializer_permissions,
            "distiller": distiller_permissions,
        }[self.role]()


class AgentPool(BaseModel):
    """The identities of one agent type (the pool file replicas of that type claim from)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_type: str
    identities: tuple[Credentials, ...]


@dataclass(frozen=True)
class TlsFiles:
    """Server TLS files, as paths the *server* sees (in compose: inside the nats container)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    verify: bool = False
    """Require client certificates signed by ``ca_file`` (mutual TLS) as well as passwords."""


@dataclass(frozen=True)
class UserEntry:
    """One user line of the server config: name, bcrypt hash of the password, permissions."""

    user: str
    password_hash: str
    permissions: Permissions


@dataclass
class CredentialSet:
    """Everything ``hive credentials`` makes: one user per service role plus the agent pools."""

    admin: Credentials
    materializer: Credentials
    distiller: Credentials
    pools: dict[str, AgentPool] = field(default_factory=dict)

    def all(self) -> list[Credentials]:
        """Every user, services first, then agents in pool order."""
        out = [self.admin, self.materializer, self.distiller]
        for pool in self.pools.values():
            out.extend(pool.identities)
        return out


def generate_password() -> str:
    """A fresh random password (192 bits, URL-safe text)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    """bcrypt hash of ``password`` as nats-server accepts it in a config (``$2b$<rounds>$…``)."""
    import bcrypt  # imported here so `import streams` does not need it

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def service_credentials(
    role: Role, password: str | None = None, tls_ca_file: str | None = None
) -> Credentials:
    """Credentials of a service role (``admin``/``materializer``/``distiller``), new password unless given."""
    if role not in SERVICE_ROLES:
        raise AuthError(f"not a service role: {role!r}")
    return Credentials(
        role=role,
        user=role,
        password=SecretStr(password or generate_password()),
        inbox_prefix=inbox_prefix_for(role),
        tls_ca_file=tls_ca_file,
    )


def agent_credentials(
    agent_type: str, agent_id: str, password: str | None = None, tls_ca_file: str | None = None
) -> Credentials:
    """Credentials of one agent identity (user ``agent-<agent_id>``), new password unless given."""
    user = agent_user(agent_id)
    return Credentials(
        role="agent",
        user=user,
        password=SecretStr(password or generate_password()),
        inbox_prefix=inbox_prefix_for(user),
        agent_id=agent_id,
        agent_type=_token(agent_type, "agent type"),
        tls_ca_file=tls_ca_file,
    )


def generate_credentials(
    agents_per_type: int,
    agent_types: Sequence[str] = DEFAULT_AGENT_TYPES,
    *,
    tls_ca_file: str | None = None,
) -> CredentialSet:
    """New random credentials: admin, materializer, distiller, and a pool of ``agents_per_type`` per type.

    ``tls_ca_file`` is the CA path *clients* will verify the server with (recorded in each file).
    """
    if agents_per_type < 1:
        raise AuthError("need at least one agent identity per type")
    if len(set(agent_types)) != len(agent_types) or not agent_types:
        raise AuthError(f"agent types must be distinct and non-empty: {list(agent_types)}")
    pools = {
        t: AgentPool(
            agent_type=t,
            identities=tuple(
                agent_credentials(t, a, tls_ca_file=tls_ca_file) for a in agent_ids(t, agents_per_type)
            ),
        )
        for t in agent_types
    }
    return CredentialSet(
        admin=service_credentials("admin", tls_ca_file=tls_ca_file),
        materializer=service_credentials("materializer", tls_ca_file=tls_ca_file),
        distiller=service_credentials("distiller", tls_ca_file=tls_ca_file),
        pools=pools,
    )


def user_entries(creds: Sequence[Credentials], rounds: int = BCRYPT_ROUNDS) -> list[UserEntry]:
    """Hash each user's password and attach its role's permissions (the impure step before rendering)."""
    return [
        UserEntry(c.user, hash_password(c.password.get_secret_value(), rounds), c.permissions())
        for c in creds
    ]


# --------------------------------------------------------------------------- rendering (pure)
def _q(s: str) -> str:
    """A quoted NATS-config string (``$`` in subjects and hashes must not read as a variable)."""
    return json.dumps(s)


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def render_user(entry: UserEntry) -> str:
    """One ``users`` element of the ``authorization`` block."""
    p = entry.permissions
    perms = [f"publish: {{ allow: {_list(p.publish)} }}", f"subscribe: {{ allow: {_list(p.subscribe)} }}"]
    if p.allow_responses:
        perms.append("allow_responses: true")
    body = "\n".join(f"        {line}" for line in perms)
    return (
        f"    {{\n      user: {_q(entry.user)}\n      password: {_q(entry.password_hash)}\n"
        f"      permissions: {{\n{body}\n      }}\n    }}"
    )


def render_tls(tls: TlsFiles) -> str:
    """The server's ``tls { … }`` block (TLS 1.2+, the nats-server minimum)."""
    lines = [f"  cert_file: {_q(tls.cert_file)}", f"  key_file: {_q(tls.key_file)}"]
    if tls.ca_file:
        lines.append(f"  ca_file: {_q(tls.ca_file)}")
    if tls.verify:
        lines.append("  verify: true")
    lines.append("  timeout: 2")
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def render_auth_config(entries: Sequence[UserEntry], *, tls: TlsFiles | None = None) -> str:
    """The nats-server config fragment with every user, its hash and permissions (and TLS if given).

    Pure: the same entries give the same text. Include it from the main config
    (``include ./auth.conf``) or pass it as ``EmbeddedServer(extra_config=...)``.
    """
    users = {e.user for e in entries}
    if len(users) != len(entries):
        raise AuthError("duplicate user names")
    head = (
        "# Generated by `hive credentials`: users, bcrypt password hashes, per-role permissions.\n"
        "# Contains no clear-text secrets, but do not commit it; regenerate with the pool.\n"
    )
    body = (
        "authorization {\n  timeout: 5\n  users: [\n"
        + "\n".join(render_user(e) for e in entries)
        + "\n  ]\n}\n"
    )
    return head + body + (render_tls(tls) if tls else "")


# --------------------------------------------------------------------------- files
def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def credentials_file(out_dir: Path, role: str) -> Path:
    """Path of a service role's credentials file in a credentials directory (``<role>.json``)."""
    return Path(out_dir) / f"{role}.json"


def pool_file(out_dir: Path, agent_type: str) -> Path:
    """Path of an agent type's pool file in a credentials directory (``agents-<type>.json``)."""
    return Path(out_dir) / f"agents-{agent_type}.json"


def write_credentials(
    cred_set: CredentialSet,
    out_dir: str | Path,
    *,
    rounds: int = BCRYPT_ROUNDS,
    tls: TlsFiles | None = None,
) -> list[Path]:
    """Write ``<role>.json``, ``agents-<type>.json`` and ``auth.conf`` (all 0600) into ``out_dir``.

    Returns the paths written. The directory is created ``0700``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for c in (cred_set.admin, cred_set.materializer, cred_set.distiller):
        p = credentials_file(out, c.role)
        _write_secret(p, c.model_dump_json(indent=2) + "\n")
        written.append(p)
    for t, pool in cred_set.pools.items():
        p = pool_file(out, t)
        _write_secret(p, pool.model_dump_json(indent=2) + "\n")
        written.append(p)
    auth = out / AUTH_FILE
    _write_secret(auth, render_auth_config(user_entries(cred_set.all(), rounds), tls=tls))
    written.append(auth)
    return written


def load_credentials(path: str | Path) -> Credentials:
    """Read a :class:`Credentials` JSON file."""
    try:
        return Credentials.model_validate_json(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read credentials {path}: {e}") from None


def load_pool(path: str | Path, agent_type: str | None = None) -> list[Credentials]:
    """The identities in a pool file, optionally only those of ``agent_type``.

    Accepts an :class:`AgentPool` file or a plain JSON list of :class:`Credentials`.
    """
    try:
        raw = json.loads(Path(path).read_bytes())
        if isinstance(raw, list):
            idents = [Credentials.model_validate(r) for r in raw]
        else:
            idents = list(AgentPool.model_validate(raw).identities)
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read agent pool {path}: {e}") from None
    return [c for c in idents if c.role == "agent" and (agent_type is None or c.agent_type == agent_type)]


# --------------------------------------------------------------------------- connecting
def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context verifying the server against ``ca_file`` (TLS 1.2 or later)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect_options(creds: Credentials | str | Path) -> dict[str, Any]:
    """Keyword arguments for :func:`streams.connect` to log in as ``creds`` (a model or a JSON file path).

    ``user``, ``password``, ``inbox_prefix`` (the role's private one), and ``tls`` when the
    credentials name a CA file.
    """
    c = creds if isinstance(creds, Credentials) else load_credentials(creds)
    opts: dict[str, Any] = {
        "user": c.user,
        "password": c.password.get_secret_value(),
        "inbox_prefix": c.inbox_prefix,
    }
    if c.tls_ca_file:
        opts["tls"] = tls_context(c.tls_ca_file)
    return opts


def connect_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Connect options from the environment; ``{}`` when none are set (an open local server).

    ``HIVE_NATS_CREDENTIALS`` names a credentials file; otherwise ``HIVE_NATS_USER`` +
    ``HIVE_NATS_PASSWORD`` (+ ``HIVE_NATS_INBOX_PREFIX``, default ``_INBOX_<user>``, and
    ``HIVE_NATS_TLS_CA``) give them directly.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_CREDENTIALS):
        return connect_options(env[ENV_CREDENTIALS])
    user = env.get("HIVE_NATS_USER")
    if not user:
        return {}
    opts: dict[str, Any] = {
        "user": user,
        "password": env.get("HIVE_NATS_PASSWORD", ""),
        "inbox_prefix": env.get("HIVE_NATS_INBOX_PREFIX") or inbox_prefix_for(user),
    }
    if env.get("HIVE_NATS_TLS_CA"):
        opts["tls"] = tls_context(env["HIVE_NATS_TLS_CA"])
    return opts


# --------------------------------------------------------------------------- identity claims
async def ensure_claims_bucket(js: Any, ttl_s: float = CLAIM_TTL_S) -> None:
    """Create the ``hive_claims`` KV bucket if missing (the materializer's job; idempotent).

    Keys expire ``ttl_s`` after their last write, so an identity whose holder died is free again.
    """
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError, NotFoundError

    from ._connect import default_replicas

    try:
        await js.key_value(CLAIMS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_key_value(
            KeyValueConfig(
                bucket=CLAIMS_BUCKET,
                history=1,
                ttl=ttl_s,
                storage=StorageType.FILE,
                description="hive agent identity claims",
                replicas=default_replicas(js._nc),  # R3 on a cluster, like the HIVE stream
            )
        )


async def ensure_agent_buckets(js: Any) -> None:
    """Create the buckets agents write but may not create: identity claims, run claims, campaigns.

    The materializer calls this at start (after the stream); idempotent.
    """
    from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

    from ._connect import default_replicas

    await ensure_claims_bucket(js)
    for bucket, ttl in ((RUN_CLAIMS_BUCKET, RUN_CLAIM_TTL_S), (CAMPAIGN_BUCKET, None)):
        try:
            await js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            with contextlib.suppress(BadRequestError):  # created concurrently by another process
                await js.create_key_value(
                    bucket=bucket, ttl=ttl, history=1, replicas=default_replicas(js._nc)
                )


@dataclass(frozen=True)
class Claim:
    """An identity a replica holds: unpacks as ``agent_id, user, password = claim``.

    ``credentials`` is the full :class:`Credentials` (use :func:`connect_options` on it);
    ``token`` tells this holder's claim from a later holder's (see :func:`renew_claim`).
    """

    agent_id: str
    user: str
    password: str
    credentials: Credentials
    token: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.agent_id, self.user, self.password))


def _claim_value(token: str) -> bytes:
    return json.dumps(
        {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimed_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


async def claim_identity(
    url: str,
    pool: str | Path | Sequence[Credentials],
    agent_type: str,
    *,
    timeout_s: float = CLAIM_TTL_S + 15,
    start: int | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
) -> Claim:
    """Claim a free identity of ``agent_type`` from ``pool`` (a pool file or a list of credentials).

    Logs in as each candidate in turn (from a random start, so simultaneous replicas rarely
    collide) and creates its key in the ``hive_claims`` bucket; the first create that succeeds
    wins. A taken key or a refused login moves on to the next candidate. Retries for up to
    ``timeout_s`` while the bucket (created by the materializer) is missing or every identity is
    taken (a restarted replica's old claim expires within :data:`CLAIM_TTL_S`, so the default
    waits that long). Keep the claim alive with :func:`renew_claim` more often than
    :data:`CLAIM_TTL_S`; :func:`release_claim` frees it at a clean stop.

    Raises :class:`ClaimError` (with the reason) when nothing could be claimed in time.
    """
    import nats.errors
    from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError

    from ._connect import connect

    idents = (
        load_pool(pool, agent_type)
        if isinstance(pool, (str, Path))
        else [c for c in pool if c.role == "agent" and c.agent_type == agent_type]
    )
    if not idents:
        raise ClaimError(f"the pool has no identities of type {agent_type!r}")
    first = random.randrange(len(idents)) if start is None else start % len(idents)
    order = idents[first:] + idents[:first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    token = secrets.token_hex(16)
    last_error = ""
    while True:
        taken = refused = 0
        for cand in order:
            assert cand.agent_id is not None
            try:
                opts: dict[str, Any] = {
                    "name": f"hive-claim-{cand.agent_id}",
                    "allow_reconnect": False,
                    "max_reconnect_attempts": 1,
                    "connect_timeout": 3,
                    "error_cb": _quiet,
                    **connect_options(cand),
                    **(connect_kwargs or {}),
                }
                nc = await connect(url, **opts)
            except (nats.errors.Error, OSError, TimeoutError) as e:
                refused += 1
                last_error = f"login as {cand.user} failed: {e or type(e).__name__}"
                continue
            try:
                kv = await nc.jetstream().key_value(CLAIMS_BUCKET)
                await kv.create(cand.agent_id, _claim_value(token))
            except KeyWrongLastSequenceError:
                taken += 1
                continue
            except (BucketNotFoundError, NotFoundError):
                last_error = f"bucket {CLAIMS_BUCKET!r} does not exist yet (the materializer creates it)"
                break
            except (nats.errors.Error, TimeoutError) as e:
                refused += 1
                last_error = f"claim of {cand.agent_id} failed: {e or type(e).__name__}"
                continue
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
            return Claim(cand.agent_id, cand.user, cand.password.get_secret_value(), cand, token)
        all_taken = taken == len(order)
        if all_taken:  # a dead holder's claim expires within CLAIM_TTL_S: wait for it
            last_error = (
                f"all {len(order)} {agent_type} identities are taken: generate a larger pool "
                "(`hive credentials --agents N`) or scale down"
            )
        if loop.time() >= deadline:
            raise ClaimError(f"no {agent_type} identity claimed within {timeout_s:g}s: {last_error}")
        await asyncio.sleep(2.0 if all_taken else 0.5)


async def _quiet(e: Exception) -> None:
    """Error callback of claim connections: failures are reported by the return path instead."""


async def renew_claim(nc: Any, claim: Claim) -> None:
    """Refresh ``claim`` on the holder's own connection (call every ~:data:`CLAIM_TTL_S`/3 seconds).

    Re-creates an expired key nobody else took. Raises :class:`ClaimLost` when another
    holder has the identity now: stop publishing as it and claim again.
    """
    from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

    kv = await nc.jetstream().key_value(CLAIMS_BUCKET)
    try:
        entry = await kv.get(claim.agent_id)
    except KeyNotFoundError:  # expired (or deleted): take it back if still free
        try:
            await kv.create(claim.agent_id, _claim_value(claim.token))
            return
        except KeyWrongLastSequenceError:
            raise ClaimLost(f"identity {claim.agent_id} was claimed by another replica") from None
    held = json.loads(entry.value or b"{}").get("token")
    if held != claim.token:
        raise ClaimLost(f"identity {claim.agent_id} was claimed by another replica")
    try:
        await kv.update(claim.agent_id, _claim_value(claim.token), last=entry.revision)
    except KeyWrongLastSequenceError:
        raise ClaimLost(f"identity {claim.agent_id} was claimed by another replica") from None


async def release_claim(nc: Any, claim: Claim) -> None:
    """Free ``claim`` at a clean stop (deletes the key if this holder still has it)."""
    from nats.js.errors import KeyNotFoundError

    kv = await nc.jetstream().key_value(CLAIMS_BUCKET)
    try:
        entry = await kv.get(claim.agent_id)
    except KeyNotFoundError:
        return
    if json.loads(entry.value or b"{}").get("token") == claim.token:
        await kv.delete(claim.agent_id, last=entry.revision)
