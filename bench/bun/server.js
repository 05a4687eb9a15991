// A minimal uWebSockets broadcast server through Bun: the baseline that
// `syncd-bench compare` measures syncd against.
//
// The tiny protocol the bench speaks to every baseline: a text message that
// starts with {"op":"sub" subscribes the connection and is answered
// {"op":"ok"}; any other text is answered {"op":"ok"} and published, as it is,
// to every subscribed connection (uWebSockets' own pub/sub).
//
// Usage: bun server.js PORT   (prints "listening" when ready)
const port = Number(process.argv[2] || 9001);
const ok = '{"op":"ok"}';
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("WebSocket only", { status: 400 });
  },
  websocket: {
    idleTimeout: 0,
    maxPayloadLength: 1 << 20,
    backpressureLimit: 1 << 30,
    closeOnBackpressureLimit: false,
    message(ws, message) {
      if (typeof message === "string" && message.startsWith('{"op":"sub"')) {
        ws.subscribe("all");
      } else {
        server.publish("all", message);
      }
      ws.send(ok);
    },
  },
});
console.log(`listening on ${server.hostname}:${server.port}`);
