// The official Phoenix JavaScript client (npm phoenix 1.8.16) against our dev portal.
//
// Usage: node phoenix_client.mjs <port> <vsn 1|2> <client_id> <resource_id>
// Joins topic "gateway" like a gateway, expects the portal's `init` push, asks the dev portal's admin
// API for a flow, answers the `authorize_flow` push with `flow_authorized` (expects an ok reply), pushes
// a forged ref (expects error invalid_ref) and an unknown event (expects error unknown_message), waits
// for heartbeat replies, leaves (ok), then prints one JSON summary line and exits 0. Any failure or a
// 15 s timeout exits 1 with the summary so far.
import { Socket } from "phoenix";
import WebSocket from "ws";

const [port, vsnArg, clientId, resourceId] = process.argv.slice(2);
const summary = { vsn: vsnArg, joined: false, init: null, authorize_flow: false, replies: {}, heartbeats: 0, left: false };
const done = (code) => {
  console.log(JSON.stringify(summary));
  process.exit(code);
};
setTimeout(() => done(1), 15000);

const opts = {
  transport: WebSocket,
  heartbeatIntervalMs: 200,
  params: {
    token: "dev-token",
    external_id: `js-${vsnArg}`,
    name: `phoenix-js-${vsnArg}`,
    public_key: Buffer.alloc(32, vsnArg === "1" ? 1 : 2).toString("base64"),
  },
  reconnectAfterMs: () => 60000,
};
if (vsnArg === "1") {
  // V1 object frames, as Firezone's gateway speaks them.
  opts.vsn = "1.0.0";
  opts.encode = (msg, cb) => cb(JSON.stringify(msg));
  opts.decode = (raw, cb) => cb(JSON.parse(raw));
}
const socket = new Socket(`ws://127.0.0.1:${port}/gateway`, opts);
socket.onError((e) => {
  summary.error = String(e && e.message ? e.message : e);
});
socket.onMessage((msg) => {
  if (msg.topic === "phoenix" && msg.event === "phx_reply" && msg.payload.status === "ok") summary.heartbeats += 1;
});
socket.connect();

const channel = socket.channel("gateway", {});
const pushExpect = (event, payload, name) =>
  new Promise((resolve) => {
    channel
      .push(event, payload, 5000)
      .receive("ok", (r) => {
        summary.replies[name] = { status: "ok", response: r };
        resolve();
      })
      .receive("error", (r) => {
        summary.replies[name] = { status: "error", response: r };
        resolve();
      })
      .receive("timeout", () => {
        summary.replies[name] = { status: "timeout" };
        resolve();
      });
  });

channel.on("init", async (payload) => {
  summary.init = { ipv4: payload.interface.ipv4, relays: payload.relays.length };
  const url = `http://127.0.0.1:${port}/admin/authorize?client=${clientId}&resource=${resourceId}&gateway=js-${vsnArg}`;
  const res = await fetch(url);
  summary.admin = res.status;
});

channel.on("authorize_flow", async (payload) => {
  summary.authorize_flow = true;
  await pushExpect("flow_authorized", { ref: payload.ref }, "valid_ref");
  await pushExpect("flow_authorized", { ref: "forged" }, "forged_ref");
  await pushExpect("no_such_event", {}, "unknown");
  const start = Date.now();
  while (summary.heartbeats < 2 && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 50));
  channel.leave().receive("ok", () => {
    summary.left = true;
    socket.disconnect(() => done(0));
  });
});

channel
  .join()
  .receive("ok", () => {
    summary.joined = true;
  })
  .receive("error", (r) => {
    summary.join_error = r;
    done(1);
  });
