// A strategy service in Node.js using cancel-worker: track its orders to its owner name,
// cancel one by task name, and guard itself with a dead man's switch beaten by one Redis
// command. Everything goes through Redis (the Celery broker), with celery-node from npm.
//
//   npm install && REDIS_URL=redis://127.0.0.1:6379/0 node strategy.js ORDER_ID
//
// Prints one JSON line per step; exits 0 when the order's record is final and the switch
// was armed, beaten and disarmed, 1 otherwise.
"use strict";

const celery = require("celery-node");
const Redis = require("ioredis");

const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const NS = process.env.CANCEL_WORKER_NAMESPACE || "cw"; // the service's key prefix
const OWNER = process.env.OWNER || "strat-node"; // this strategy: [a-z][a-z0-9_-]{0,63}
const ACCOUNT = process.env.ACCOUNT || "default";
const SWITCH = `${OWNER}-switch`;
const TIMEOUT_S = 10;
const WAIT_MS = 30000; // how long each step may take before the example gives up

// Two clients, one per queue the tasks are routed to (README: task names and queues).
// The service keeps no task results: records and switches are read from Redis instead.
const cancels = celery.createClient(REDIS_URL, REDIS_URL, "cancels");
const polls = celery.createClient(REDIS_URL, REDIS_URL, "polls");
const redis = new Redis(REDIS_URL);

const say = (step, fields) => console.log(JSON.stringify({ step, ...fields }));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, probe) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// One Redis command: "OK" while the switch is armed; null when tripped or not armed.
const beat = () => redis.set(`${NS}:deadman:beat:${SWITCH}`, "1", "PX", TIMEOUT_S * 1000, "XX");
const switchState = () => redis.hget(`${NS}:deadman:switch:${SWITCH}`, "state");

async function main(orderId) {
  // 1. The order is this strategy's: its cancels take turns with other strategies' on the
  //    same key, and a switch scoped to this owner covers it (and no one else's).
  cancels.sendTask("cancel_worker.track_orders", [], {
    order_ids: [orderId], owner: OWNER, account: ACCOUNT,
  });
  await until("the order tracked", () => redis.get(`${NS}:owner:${orderId}`));
  say("tracked", { order_id: orderId, owner: OWNER });

  // 2. Cancel it by task name, with its owner; the record says how it ends.
  cancels.sendTask("cancel_worker.cancel_order", [orderId], {
    account: ACCOUNT, owner: OWNER, priority: "urgent",
  });
  const record = await until("a final record", async () => {
    const raw = await redis.get(`${NS}:record:${orderId}`);
    const parsed = raw && JSON.parse(raw);
    return parsed && parsed.final_at ? parsed : null;
  });
  say("cancelled", { order_id: orderId, state: record.state, owner: record.owner });

  // 3. A dead man's switch for this owner's orders only; beat it every timeout / 4.
  polls.sendTask("cancel_worker.deadman_arm", [], {
    name: SWITCH, timeout_s: TIMEOUT_S, owner: OWNER, account: ACCOUNT,
  });
  await until("the switch armed", async () => (await switchState()) === "ARMED" && beat());
  let beats = 0;
  for (; beats < 3; beats += 1) {
    if ((await beat()) !== "OK") throw new Error("the switch tripped: orders are being cancelled");
    await sleep((TIMEOUT_S * 1000) / 40); // a quick demo; a strategy beats every timeout / 4
  }
  say("armed", { name: SWITCH, beats });

  // 4. A planned stop: disarm first, or the switch fires.
  polls.sendTask("cancel_worker.deadman_disarm", [SWITCH], {});
  const state = await until("the switch disarmed", async () =>
    (await switchState()) === "DISARMED" ? "DISARMED" : null);
  say("disarmed", { name: SWITCH, state });
  return record.state === "CANCELLED";
}

const orderId = process.argv[2];
if (!orderId) {
  console.error("usage: node strategy.js ORDER_ID");
  process.exit(2);
}
main(orderId.toLowerCase())
  .then((ok) => { process.exitCode = ok ? 0 : 1; })
  .catch((err) => { console.error(`strategy: ${err.message}`); process.exitCode = 1; })
  .finally(() => Promise.all([cancels.disconnect(), polls.disconnect(), redis.quit()]));
