// A hive agent in JavaScript (nats.js), written only from docs/protocol.md and `hive schema`.
//
// It runs random search on the Branin function as its own task ("node-branin"), and speaks the
// hive's wire contract: lifecycle events on hive.agents.<id>.<started|heartbeat|stopped>, traces on
// hive.traces.<type>.<id>, Nats-Msg-Id = event_id on every publish (checked ack), event ids that
// carry an incarnation token (unique across restarts), and a read-only SQL query over request/reply.
//
//   HIVE_NATS_URL=nats://127.0.0.1:4222 HIVE_AGENT_ID=node-1 HIVE_EXPERIMENTS=20 node agent.mjs
//
// With auth on, set HIVE_NATS_USER / HIVE_NATS_PASSWORD (the agent's identity from `hive credentials`).
import { connect, headers } from "nats";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";

const url = process.env.HIVE_NATS_URL || "nats://127.0.0.1:4222";
const agentId = process.env.HIVE_AGENT_ID || "node-1";
const agentType = process.env.HIVE_AGENT_TYPE || "node_random";
const task = process.env.HIVE_TASK || "node-branin";
const experiments = Number.parseInt(process.env.HIVE_EXPERIMENTS || "10", 10);
const incarnation = randomBytes(4).toString("hex"); // new per process start: ids never collide
const enc = (obj) => new TextEncoder().encode(JSON.stringify(obj));
const dec = (buf) => JSON.parse(new TextDecoder().decode(buf));

function branin(x1, x2) {
  const b = 5.1 / (4 * Math.PI ** 2), c = 5 / Math.PI, t = 1 / (8 * Math.PI);
  return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * Math.cos(x1) + 10;
}

function envelope(kind, schemaVersion, step) {
  return {
    event_id: `${agentId}/${incarnation}/${step}`,
    schema_version: schemaVersion,
    kind,
    agent_id: agentId,
    agent_type: agentType,
    occurred_at: new Date().toISOString(),
  };
}

// The subject rule (x-subject in `hive schema`).
function subjectFor(event) {
  if (event.kind.startsWith("Agent")) {
    return `hive.agents.${event.agent_id}.${event.kind.slice("Agent".length).toLowerCase()}`;
  }
  return `hive.traces.${event.agent_type}.${event.agent_id}`;
}

const opts = { servers: url.split(","), name: `hive-node-agent-${agentId}` };
if (process.env.HIVE_NATS_USER) {
  opts.user = process.env.HIVE_NATS_USER;
  opts.pass = process.env.HIVE_NATS_PASSWORD || "";
  opts.inboxPrefix = process.env.HIVE_NATS_INBOX_PREFIX || `_INBOX_${opts.user}`;
}
const nc = await connect(opts);
const js = nc.jetstream();

async function publish(event) {
  const h = headers();
  h.set("Nats-Msg-Id", event.event_id); // the server drops a retried publish inside its window
  const ack = await js.publish(subjectFor(event), enc(event), { headers: h });
  if (ack.stream !== "HIVE") throw new Error(`unexpected stream ${ack.stream}`);
  return ack;
}

async function query(sql, params = []) {
  const reply = await nc.request("hive.query.sql", enc({ sql, params, timeout_s: 10, max_rows: 1000 }), {
    timeout: 15000,
  });
  const body = dec(reply.data);
  if (body.error) throw new Error(`query refused: ${body.error}`);
  return body;
}

let step = 0;
await publish({
  ...envelope("AgentStarted", 1, `started/${step++}`),
  host: hostname().slice(0, 200),
  pid: process.pid,
  task,
  heartbeat_s: 5.0,
});

let best = Infinity;
for (let i = 0; i < experiments; i++) {
  const runId = `run-${incarnation}-${i}`;
  const recipe = { x1: -5 + 15 * Math.random(), x2: 15 * Math.random() };
  const common = { task, model_version: 0, run_id: runId, recipe, seed: i, budget: 1.0 };
  await publish({ ...envelope("ExperimentStarted", 1, `${runId}/start`), ...common, deadline_s: 60.0 });
  const t0 = performance.now();
  const value = branin(recipe.x1, recipe.x2);
  const success = value < best;
  best = Math.min(best, value);
  await publish({
    ...envelope("ExperimentFinished", 2, `${runId}/finish`),
    ...common,
    metrics: { value },
    objective: value,
    cost_s: (performance.now() - t0) / 1000,
    status: "ok",
    success,
    proposer: "random",
  });
  await publish({
    ...envelope("AgentHeartbeat", 1, `heartbeat/${step++}`),
    state: "running",
    model_version: 0,
    experiments: i + 1,
  });
}
await publish({ ...envelope("AgentStopped", 1, `stopped/${step++}`), reason: "done" });

// Read our own history back from the materialized state (the query service is read-only).
let seen = 0;
for (let attempt = 0; attempt < 50; attempt++) {
  const res = await query("SELECT count(*) AS n, min(objective) AS best FROM experiments WHERE agent_id = ?", [
    agentId,
  ]);
  seen = res.rows[0][0];
  if (seen >= experiments) {
    console.log(JSON.stringify({ agent_id: agentId, experiments: seen, best: res.rows[0][1] }));
    break;
  }
  await new Promise((r) => setTimeout(r, 200));
}
await nc.drain();
if (seen < experiments) {
  console.error(`only ${seen} of ${experiments} experiments materialized`);
  process.exit(1);
}
