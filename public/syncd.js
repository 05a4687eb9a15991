// syncd.js — the browser client for syncd. Dependency-free ES module.
// Docs: docs/client.md. Served by syncd at /syncd.js.

/** An error reply from the server: `code`, `message`, and for conflicts `current`. */
export class SyncError extends Error {
  constructor(reply) {
    super(reply.message || reply.code);
    this.code = reply.code;
    this.current = reply.current;
  }
}

/**
 * A connection to syncd that reconnects by itself (jittered exponential
 * backoff), resubscribes and resumes every channel from the last seq it saw,
 * and never hands a message to a handler twice.
 *
 * `status` is "connecting", "open" or "closed". Events (addEventListener):
 * "state" (detail: the new status),
 * "resync" (detail: {channel}) when a resume could not recover every missed
 * message, "broadcast" (detail: data), "inbox" (detail: msg).
 */
export class SyncClient extends EventTarget {
  constructor(url, { token = null, minDelay = 250, maxDelay = 8000, autoAck = true } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.autoAck = autoAck;
    this.status = "closed";
    this.uid = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._channels = new Map(); // channel -> {seq, epoch, handlers:Set}
    this._attempt = 0;
    this._stopped = false;
    this._inboxSeq = 0;
  }

  /** Opens the connection (and keeps it open until close()). */
  connect() {
    this._stopped = false;
    this._open();
    return this;
  }

  close() {
    this._stopped = true;
    if (this._ws) this._ws.close(1000);
  }

  _setState(state) {
    if (this.status === state) return;
    this.status = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _open() {
    this._setState("connecting");
    const url = this.token ? `${this.url}${this.url.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token)}` : this.url;
    const ws = new WebSocket(url);
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      this._setState("open");
      for (const channel of this._channels.keys()) this._resubscribe(channel);
    };
    ws.onmessage = (event) => this._onFrame(JSON.parse(event.data));
    ws.onclose = () => {
      this._ws = null;
      for (const { reject } of this._pending.values()) reject(new SyncError({ code: "disconnected", message: "connection closed" }));
      this._pending.clear();
      this._setState("closed");
      if (this._stopped) return;
      const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
      setTimeout(() => this._open(), delay / 2 + Math.random() * delay / 2);
    };
  }

  _onFrame(frame) {
    if (frame.id !== undefined && this._pending.has(frame.id)) {
      const { resolve, reject } = this._pending.get(frame.id);
      this._pending.delete(frame.id);
      if (frame.op === "error") reject(new SyncError(frame));
      else resolve(frame);
      return;
    }
    if (frame.op === "msg") {
      if (frame.channel.startsWith("#")) return this._onInbox(frame);
      const sub = this._channels.get(frame.channel);
      if (!sub || frame.seq <= sub.seq) return; // already seen
      sub.seq = frame.seq;
      for (const handler of sub.handlers) handler(frame);
    } else if (frame.op === "join" || frame.op === "leave") {
      const sub = this._channels.get(frame.channel);
      if (sub) for (const handler of sub.handlers) handler(frame);
    } else if (frame.op === "broadcast") {
      this.dispatchEvent(new CustomEvent("broadcast", { detail: frame.data }));
    }
  }

  _onInbox(frame) {
    if (frame.seq <= this._inboxSeq) return; // a redelivery already handled
    this._inboxSeq = frame.seq;
    this.dispatchEvent(new CustomEvent("inbox", { detail: frame }));
    if (this.autoAck) this.ack(frame.seq).catch(() => {});
  }

  /** Sends a request; resolves with the reply, rejects with SyncError. */
  request(op, fields = {}) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SyncError({ code: "disconnected", message: "not connected" }));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this._ws.send(JSON.stringify({ op, id, ...fields }));
    });
  }

  /**
   * Subscribes `handler` to a channel's messages (and join/leave events).
   * `since`/`epoch` start from a known point, such as a state() snapshot.
   */
  async subscribe(channel, handler, { since = null, epoch = null } = {}) {
    let sub = this._channels.get(channel);
    if (!sub) {
      sub = { seq: since ?? 0, epoch, handlers: new Set(), resume: since !== null };
      this._channels.set(channel, sub);
    }
    sub.handlers.add(handler);
    if (this.status === "open") await this._resubscribe(channel);
  }

  async _resubscribe(channel) {
    const sub = this._channels.get(channel);
    const fields = { channel };
    if (sub.resume) {
      fields.since = sub.seq;
      if (sub.epoch) fields.epoch = sub.epoch;
    }
    try {
      const reply = await this.request("sub", fields);
      if (reply.recovered === false) {
        this.dispatchEvent(new CustomEvent("resync", { detail: { channel, reply } }));
      }
      if (!sub.resume || reply.recovered === false) sub.seq = reply.seq;
      sub.epoch = reply.epoch;
      sub.resume = true;
    } catch (e) {
      if (e.code !== "disconnected" && e.code !== "already_subscribed") throw e;
    }
  }

  async unsubscribe(channel) {
    this._channels.delete(channel);
    if (this.status === "open") await this.request("unsub", { channel });
  }

  publish(channel, data, { ttl } = {}) {
    return this.request("pub", { channel, data, ...(ttl ? { ttl } : {}) });
  }

  history(channel, since = 0, limit = 100) {
    return this.request("history", { channel, since, limit });
  }

  /** Compare-and-set; rejects with SyncError code "conflict" (see .current). */
  set(channel, key, value, version) {
    return this.request("set", { channel, key, value, version });
  }

  del(channel, key, version) {
    return this.request("del", { channel, key, version });
  }

  get(channel, key) {
    return this.request("get", { channel, key });
  }

  /** Every key of a channel and the seq to subscribe `since`. */
  state(channel) {
    return this.request("state", { channel });
  }

  async auth(token) {
    const reply = await this.request("auth", { token });
    this.token = token;
    this.uid = reply.uid;
    return reply;
  }

  send(uid, data, { ttl } = {}) {
    return this.request("send", { uid, data, ...(ttl ? { ttl } : {}) });
  }

  /** Acknowledges the inbox up to `seq` (cumulative). */
  ack(seq) {
    if (!this.uid && this.token) this.uid = JSON.parse(atob(this.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
    return this.request("ack", { channel: `#${this.uid}`, seq });
  }

  presence(channel) {
    return this.request("presence", { channel });
  }
}
