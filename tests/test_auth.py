"""NATS authorization of the hive roles, against a real nats-server running the generated config.

One server per module (random port, temporary store) with the users of ``hive credentials``
(bcrypt cost 4 to keep logins fast). The stream, claims bucket, model object and pointer are
provisioned by the roles that own them, as in production. Refusals surface in nats-py
asynchronously (the error callback gets "Permissions Violation"); a refused JetStream publish
gets no ack, so each check also confirms the stream or bucket is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NoStreamResponseError

import streams
from streams import _auth as auth
from streams._consumer import LogReader

from .conftest import wait_for

MODEL_BYTES = b"safetensors-bytes-" * 4096  # ~72 KB: several Object Store chunks
REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError)


class Login:
    """A connection as one user, recording the errors the server reports asynchronously."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=2.0)
        self.denied = nc.jetstream(timeout=0.4)  # for calls expected to be refused (no answer comes)
        self.errors = errors

    async def violation(self, fragment: str, timeout: float = 3.0) -> str:
        """Wait for a "Permissions Violation" error mentioning ``fragment``; return it."""

        def found() -> str | None:
            return next(
                (
                    e
                    for e in self.errors
                    if "permissions violation" in e.lower() and fragment.lower() in e.lower()
                ),
                None,
            )

        return str(
            await wait_for(
                found, timeout=timeout, every=0.02, what=f"violation on {fragment} in {self.errors}"
            )
        )


@contextlib.asynccontextmanager
async def login(url: str, creds: auth.Credentials | None, **kw: Any) -> AsyncIterator[Login]:
    """Connect as ``creds`` (its user, password and private inbox prefix); close at exit."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    opts = auth.connect_options(creds) if creds else {}
    nc = await streams.connect(
        url,
        name="test-auth",
        error_cb=on_error,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=3,
        **opts,
        **kw,
    )
    try:
        yield Login(nc, errors)
    finally:
        await nc.close()


async def _provision(url: str, cs: auth.CredentialSet) -> None:
    """What the services do at start: materializer → stream + claims, distiller → model + pointer."""
    async with login(url, cs.materializer) as m:
        await streams.ensure_stream(m.js)
        await auth.ensure_agent_buckets(m.js)
    async with login(url, cs.distiller) as d:
        obs = await d.js.create_object_store(streams.MODEL_BUCKET)
        await obs.put("policy-v1", MODEL_BYTES)
        kv = await d.js.create_key_value(bucket=streams.POINTER_BUCKET, history=5)
        await kv.put("policy", b"policy-v1")


@pytest.fixture(scope="module")
def creds() -> auth.CredentialSet:
    """A small credential set: two researcher and two deployer identities."""
    return auth.generate_credentials(2, ["researcher", "deployer"])


@pytest.fixture(scope="module")
def server(creds: auth.CredentialSet) -> Iterator[streams.EmbeddedServer]:
    """A nats-server with the rendered auth config, provisioned by its owning roles."""
    conf = auth.render_auth_config(auth.user_entries(creds.all(), rounds=4))
    srv = streams.EmbeddedServer(extra_config=conf, http_port=None)
    srv.start()
    try:
        asyncio.run(_provision(srv.url, creds))
        yield srv
    finally:
        srv.stop()


def _researchers(cs: auth.CredentialSet) -> tuple[auth.Credentials, auth.Credentials]:
    a, b = cs.pools["researcher"].identities
    return a, b


async def _count(url: str, cs: auth.CredentialSet) -> int:
    async with login(url, cs.admin) as a:
        return int((await a.js.stream_info(streams.STREAM)).state.messages)


# --------------------------------------------------------------------------- pure parts
def test_render_auth_config_is_pure_and_scoped() -> None:
    """The renderer is deterministic, quotes `$` subjects, and scopes each role's rights as designed."""
    cs = auth.generate_credentials(1, ["researcher"])
    entries = [auth.UserEntry(c.user, "$2b$04$" + "x" * 53, c.permissions()) for c in cs.all()]
    text = auth.render_auth_config(entries)
    assert text == auth.render_auth_config(entries)
    for user in ("admin", "materializer", "distiller", "agent-researcher-01"):
        assert f'user: "{user}"' in text
    assert '"$JS.API.STREAM.INFO.HIVE"' in text and " $JS" not in text.replace('" $JS', "")
    assert text.count("allow_responses: true") == 1  # only the query service answers requests

    agent = cs.pools["researcher"].identities[0].permissions()
    assert "hive.traces.researcher.researcher-01" in agent.publish
    assert "hive.agents.researcher-01.>" in agent.publish
    assert agent.subscribe == ("_INBOX_agent-researcher-01.>",)
    forbidden = ("hive.traces.>", "hive.models.>", "$O.hive_models.>", "$KV.hive_pointer.>", ">")
    assert not set(forbidden) & set(agent.publish)
    assert not [
        s
        for s in agent.publish
        if any(op in s for op in ("CREATE.HIVE", "DELETE.HIVE", "PURGE", "UPDATE"))
        and not s.startswith("$JS.API.CONSUMER")
    ]
    distiller = auth.distiller_permissions()
    assert "$O.hive_models.>" in distiller.publish and "hive.models.>" in distiller.publish
    assert not [
        s for s in auth.materializer_permissions().publish if s.startswith(("$O.", "$KV.hive_pointer"))
    ]

    tls = auth.render_auth_config(entries, tls=auth.TlsFiles("/c.pem", "/k.pem", "/ca.pem", verify=True))
    assert 'cert_file: "/c.pem"' in tls and "verify: true" in tls
    with pytest.raises(auth.AuthError):
        auth.render_auth_config(entries + entries[:1])
    with pytest.raises(auth.AuthError):
        auth.agent_ids("bad.type", 2)


def test_generated_files_make_a_valid_server_config(tmp_path: Path) -> None:
    """write_credentials writes 0600 files whose auth.conf nats-server accepts (`nats-server -t`)."""
    cs = auth.generate_credentials(3, ["researcher"])
    written = auth.write_credentials(cs, tmp_path / "creds", rounds=4)
    assert {p.name for p in written} == {
        "admin.json",
        "materializer.json",
        "distiller.json",
        "agents-researcher.json",
        "auth.conf",
    }
    assert all(p.stat().st_mode & 0o077 == 0 for p in written)
    back = auth.load_credentials(tmp_path / "creds" / "distiller.json")
    assert back.password.get_secret_value() == cs.distiller.password.get_secret_value()
    assert "*****" in repr(back)  # the password stays out of reprs and logs
    pool = auth.load_pool(tmp_path / "creds" / "agents-researcher.json", "researcher")
    assert [c.agent_id for c in pool] == ["researcher-01", "researcher-02", "researcher-03"]
    conf = tmp_path / "creds" / "main.conf"
    conf.write_text(
        f'listen: 127.0.0.1:-1\njetstream {{ store_dir: "{tmp_path / "js"}" }}\ninclude ./auth.conf\n'
    )
    r = subprocess.run([streams.find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    opts = auth.connect_options(tmp_path / "creds" / "materializer.json")
    assert opts["user"] == "materializer" and opts["inbox_prefix"] == "_INBOX_materializer"
    env = auth.connect_options_from_env({auth.ENV_CREDENTIALS: str(tmp_path / "creds" / "admin.json")})
    assert env["user"] == "admin"
    assert auth.connect_options_from_env({}) == {}


# --------------------------------------------------------------------------- claims
async def test_claims_give_distinct_identities(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """Two replicas claiming from one pool at once get different identities; a full pool refuses a
    third; a released identity can be claimed again; a claim taken over is reported lost."""
    pool = list(creds.pools["deployer"].identities)
    a, b = await asyncio.gather(
        auth.claim_identity(server.url, pool, "deployer", start=0),
        auth.claim_identity(server.url, pool, "deployer", start=0),
    )
    assert {a.agent_id, b.agent_id} == {"deployer-01", "deployer-02"}
    agent_id, user, password = a
    assert user == f"agent-{agent_id}" and password == a.credentials.password.get_secret_value()
    with pytest.raises(auth.ClaimError, match="taken"):
        await auth.claim_identity(server.url, pool, "deployer", timeout_s=2)

    async with login(server.url, a.credentials) as la:
        await auth.renew_claim(la.nc, a)
        await auth.release_claim(la.nc, a)
    c = await auth.claim_identity(server.url, pool, "deployer", timeout_s=5)
    assert c.agent_id == a.agent_id and c.token != a.token
    async with login(server.url, a.credentials) as la:
        with pytest.raises(auth.ClaimLost):
            await auth.renew_claim(la.nc, a)  # the old holder learns it must stop
    with pytest.raises(auth.ClaimError, match="no identities"):
        await auth.claim_identity(server.url, pool, "analyst", timeout_s=1)


async def test_agent_cannot_claim_another_identity(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """An agent may write only its own key of the claims bucket."""
    me, other = _researchers(creds)
    async with login(server.url, me) as a:
        kv = await a.denied.key_value(auth.CLAIMS_BUCKET)
        with pytest.raises(REFUSED):
            await kv.create(other.agent_id or "", b"mine")
        await a.violation(f"$KV.{auth.CLAIMS_BUCKET}.{other.agent_id}")


# --------------------------------------------------------------------------- refusals
async def test_agent_cannot_publish_another_agents_traces(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """Publishing on another agent's trace or lifecycle subject (or its own id under another type)
    is refused: no ack, and the HIVE stream's message count is unchanged."""
    me, other = _researchers(creds)
    before = await _count(server.url, creds)
    async with login(server.url, me) as a:
        for subject in (
            f"hive.traces.researcher.{other.agent_id}",
            f"hive.agents.{other.agent_id}.heartbeat",
            f"hive.traces.deployer.{me.agent_id}",
            "hive.traces.researcher.x.y",
        ):
            with pytest.raises(REFUSED):
                await a.js.publish(subject, b"{}", timeout=0.5)
            await a.violation(subject)
    assert await _count(server.url, creds) == before


async def test_agent_cannot_publish_model_events(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """An agent publishing a model event on hive.models.policy is refused and nothing is stored."""
    me, _ = _researchers(creds)
    before = await _count(server.url, creds)
    async with login(server.url, me) as a:
        with pytest.raises(REFUSED):
            await a.js.publish("hive.models.policy", b"{}", timeout=0.5)
        await a.violation("hive.models.policy")
    assert await _count(server.url, creds) == before


async def test_agent_cannot_write_model_bucket_or_pointer(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """An agent cannot put into the hive_models Object Store, write the hive_pointer KV, or create
    either bucket; the distiller's object and pointer are unchanged."""
    me, _ = _researchers(creds)
    async with login(server.url, me) as a:
        obs = await a.denied.object_store(streams.MODEL_BUCKET)
        with pytest.raises(REFUSED):
            await obs.put("policy-v1", b"evil weights")
        await a.violation(f"$O.{streams.MODEL_BUCKET}.")
        kv = await a.denied.key_value(streams.POINTER_BUCKET)
        with pytest.raises(REFUSED):
            await kv.put("policy", b"evil-version")
        await a.violation(f"$KV.{streams.POINTER_BUCKET}.policy")
        with pytest.raises(REFUSED):
            await a.denied.create_key_value(bucket="evil_pointer")
        await a.violation("$JS.API.STREAM.CREATE.KV_evil_pointer")
    async with login(server.url, creds.admin) as adm:
        assert (await (await adm.js.key_value(streams.POINTER_BUCKET)).get("policy")).value == b"policy-v1"
        got = await (await adm.js.object_store(streams.MODEL_BUCKET)).get("policy-v1")
        assert got.data == MODEL_BYTES


async def test_agent_cannot_delete_purge_or_reconfigure_streams(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """Delete, purge, update, message delete and stream create are refused for an agent; HIVE and
    the model stream keep their messages."""
    me, _ = _researchers(creds)
    async with login(server.url, creds.admin) as adm:
        await adm.js.publish("hive.traces.researcher.seed", b"{}")  # something to lose
    before = await _count(server.url, creds)
    assert before > 0
    async with login(server.url, me) as a:
        cfg = (await a.js.stream_info(streams.STREAM)).config  # reading the config is allowed
        attempts = [
            (a.denied.delete_stream(streams.STREAM), "$JS.API.STREAM.DELETE.HIVE"),
            (a.denied.purge_stream(streams.STREAM), "$JS.API.STREAM.PURGE.HIVE"),
            (
                a.nc.request("$JS.API.STREAM.MSG.DELETE.HIVE", b'{"seq": 1}', timeout=0.4),
                "$JS.API.STREAM.MSG.DELETE.HIVE",
            ),
            (a.denied.update_stream(cfg), "$JS.API.STREAM.UPDATE.HIVE"),
            (
                a.denied.delete_stream(f"OBJ_{streams.MODEL_BUCKET}"),
                f"$JS.API.STREAM.DELETE.OBJ_{streams.MODEL_BUCKET}",
            ),
            (
                a.denied.add_stream(StreamConfig(name="EVIL", subjects=["evil.>"])),
                "$JS.API.STREAM.CREATE.EVIL",
            ),
        ]
        for coro, subject in attempts:
            with pytest.raises(REFUSED):
                await coro
            await a.violation(subject)
    assert await _count(server.url, creds) == before
    async with login(server.url, creds.admin) as adm:
        assert (await adm.js.stream_info(f"OBJ_{streams.MODEL_BUCKET}")).state.messages > 0


async def test_agent_cannot_read_other_inboxes_or_answer_queries(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """Subscribing to another role's inbox prefix, the shared _INBOX, the query subject or the raw
    trace subjects is refused, and nothing published there reaches the agent."""
    me, other = _researchers(creds)
    targets = [
        "_INBOX_materializer.>",
        "_INBOX_admin.>",
        f"_INBOX_agent-{other.agent_id}.>",
        "_INBOX.>",
        "hive.query.>",
        "hive.traces.>",
    ]
    async with login(server.url, me) as a:
        got: list[str] = []

        async def cb(msg: Any) -> None:
            got.append(msg.subject)

        for t in targets:
            await a.nc.subscribe(t, cb=cb)
        for t in targets:
            await a.violation(f'Subscription to "{t}"')
        # Its own prefix is fine.
        own = await a.nc.subscribe(f"{me.inbox_prefix}.probe")
        async with login(server.url, creds.admin) as adm:
            for t in targets:
                await adm.nc.publish(t.replace(">", "probe"), b"secret")
            await adm.nc.publish(f"{me.inbox_prefix}.probe", b"mine")
            await adm.nc.flush()
        msg = await own.next_msg(timeout=2)
        assert msg.data == b"mine"
        await asyncio.sleep(0.2)
        assert got == []


async def test_agent_cannot_relay_chosen_bytes_into_hive(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """A push consumer's deliver subject is stored by a stream capturing it, so an agent must not
    relay bytes it chose: it may not create consumers on the claims buckets it writes, and a push
    consumer on HIVE delivering into HIVE's own subjects is refused; HIVE is unchanged."""
    me, other = _researchers(creds)
    before = await _count(server.url, creds)
    target = f"hive.traces.researcher.{other.agent_id}"
    async with login(server.url, creds.admin) as adm, login(server.url, me) as a:
        await adm.nc.subscribe(target)  # interest, so a consumer would really deliver
        await adm.nc.flush()
        for bucket in (auth.CLAIMS_BUCKET, auth.RUN_CLAIMS_BUCKET):
            with pytest.raises(REFUSED):
                await a.denied.add_consumer(
                    f"KV_{bucket}",
                    ConsumerConfig(deliver_subject=target, deliver_policy=DeliverPolicy.ALL),
                )
            await a.violation(f"$JS.API.CONSUMER.CREATE.KV_{bucket}")
        with pytest.raises(nats.js.errors.BadRequestError):
            await a.js.add_consumer(
                streams.STREAM,
                ConsumerConfig(
                    deliver_subject=target,
                    deliver_policy=DeliverPolicy.ALL,
                    filter_subject=f"hive.traces.researcher.{me.agent_id}",
                ),
            )
        await asyncio.sleep(0.3)
    assert await _count(server.url, creds) == before


async def test_no_or_wrong_credentials_cannot_connect(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """No credentials, a wrong password, or an unknown user cannot connect."""
    me, _ = _researchers(creds)
    wrong = me.model_copy(update={"password": auth.SecretStr("not-the-password")})
    stranger = auth.agent_credentials("researcher", "researcher-99")
    for c in (None, wrong, stranger):
        with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
            async with login(server.url, c):
                pass


# --------------------------------------------------------------------------- what each role can do
async def test_agent_publishes_own_traces_and_reads_models(
    server: streams.EmbeddedServer, creds: auth.CredentialSet
) -> None:
    """The agent's own trace and lifecycle publishes are acked and stored; it can read the model
    object and the KV pointer the distiller wrote (get and watch), claim runs, take campaign budget,
    and read HIVE."""
    me, _ = _researchers(creds)
    before = await _count(server.url, creds)
    async with login(server.url, me) as a:
        ack = await a.js.publish(f"hive.traces.researcher.{me.agent_id}", b"{}", timeout=2)
        assert ack.stream == streams.STREAM and ack.seq > 0
        await a.js.publish(f"hive.agents.{me.agent_id}.heartbeat", b"{}", timeout=2)
        kv = await a.js.key_value(streams.POINTER_BUCKET)
        version = (await kv.get("policy")).value
        assert version == b"policy-v1"
        watcher = await kv.watchall()
        first = await watcher.updates(timeout=2)
        assert first is not None and first.key == "policy"
        await watcher.stop()
        obs = await a.js.object_store(streams.MODEL_BUCKET)
        assert (await obs.get(version.decode())).data == MODEL_BYTES
        runs = await a.js.key_value(auth.RUN_CLAIMS_BUCKET)  # run claims (agents._claims)
        await runs.create("run-key-1", me.agent_id.encode() if me.agent_id else b"")
        await runs.delete("run-key-1")
        await runs.create("run-key-1", b"again")  # re-create over the tombstone
        from agents import Campaign  # campaign budgets: the CAS counters researchers share

        camp = await Campaign(a.js, ["branin/0"], budget=3).open()
        assert await camp.take("branin/0") and await camp.used("branin/0") == 1
        reader = await LogReader(a.nc, filter_subject="hive.traces.>").start()  # reactive agents
        try:
            assert await reader.fetch(100, timeout=1)
        finally:
            await reader.close()
        assert not [e for e in a.errors if "violation" in e.lower()], a.errors
    assert await _count(server.url, creds) == before + 2


async def test_distiller_writes_models(server: streams.EmbeddedServer, creds: auth.CredentialSet) -> None:
    """The distiller can put a new model object, move the pointer and publish hive.models.policy;
    it cannot publish traces."""
    async with login(server.url, creds.distiller) as d:
        obs = await d.js.object_store(streams.MODEL_BUCKET)
        await obs.put("policy-v2", MODEL_BYTES[::-1])
        kv = await d.js.key_value(streams.POINTER_BUCKET)
        entry = await kv.get("policy")
        await kv.update("policy", b"policy-v2", last=entry.revision)
        ack = await d.js.publish("hive.models.policy", b"{}", timeout=2)
        assert ack.seq > 0
        with pytest.raises(REFUSED):
            await d.js.publish("hive.traces.researcher.researcher-01", b"{}", timeout=0.5)
        # put it back for the other tests
        await kv.put("policy", b"policy-v1")
    me, _ = _researchers(creds)
    async with login(server.url, me) as a:
        assert (await (await a.js.object_store(streams.MODEL_BUCKET)).get("policy-v2")).data == MODEL_BYTES[
            ::-1
        ]


async def test_materializer_consumes_hive_and_admin_queries(
    server: streams.EmbeddedServer, creds: auth.CredentialSet, tmp_path: Path
) -> None:
    """The materializer role provisions and pulls HIVE (a pull consumer) and answers queries; the
    admin and an agent get the answers on their own inboxes; the materializer cannot write models."""
    from hive import Materializer, remote_query

    me, _ = _researchers(creds)
    async with login(server.url, creds.materializer) as m:
        reader = await LogReader(m.nc).start()
        try:
            assert len(await reader.fetch(1000, timeout=1)) == await _count(server.url, creds)
        finally:
            await reader.close()
        with pytest.raises(REFUSED):
            await m.js.publish("hive.models.policy", b"{}", timeout=0.5)

    mat = Materializer(
        server.url, tmp_path / "hive.duckdb", connect_options=auth.connect_options(creds.materializer)
    )
    task = asyncio.create_task(mat.run())
    try:
        async with login(server.url, creds.admin) as adm, login(server.url, me) as a:
            for who in (adm, a):

                async def ask(w: Login = who) -> Any:
                    return await remote_query(w.nc, "SELECT 42 AS x", timeout_s=2)

                res = await wait_for(ask, timeout=20, what="query answer")
                assert [list(r) for r in res.rows] == [[42]]
                assert not [e for e in who.errors if "violation" in e.lower()], who.errors
    finally:
        mat.stop()
        await asyncio.wait_for(task, 20)


# --------------------------------------------------------------------------- TLS
def _self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost it signed: (ca, cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hive test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("nats"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = tmp / "ca.pem", tmp / "server.crt", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def test_tls_config_encrypts_and_verifies(tmp_path: Path) -> None:
    """With TLS in the generated config, a client verifying against the CA connects and publishes;
    one that trusts only the system CAs is refused."""
    ca, cert, key = _self_signed(tmp_path)
    cs = auth.generate_credentials(1, ["researcher"], tls_ca_file=str(ca))
    conf = auth.render_auth_config(
        auth.user_entries(cs.all(), rounds=4), tls=auth.TlsFiles(str(cert), str(key))
    )
    with streams.EmbeddedServer(extra_config=conf, http_port=None) as srv:
        url = f"tls://127.0.0.1:{srv.port}"
        async with login(url, cs.materializer) as m:
            await streams.ensure_stream(m.js)
        agent = cs.pools["researcher"].identities[0]
        async with login(url, agent) as a:
            assert (await a.js.publish(f"hive.traces.researcher.{agent.agent_id}", b"{}", timeout=2)).seq == 1
        untrusted = agent.model_copy(update={"tls_ca_file": None})
        with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
            async with login(url, untrusted):
                pass
