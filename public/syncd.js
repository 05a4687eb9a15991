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

/** Error codes a (re)subscription is retried on: the owner is restarting. */
const RETRYABLE = new Set(["unavailable", "storage_failed"]);

/**
 * A connection to syncd that reconnects by itself (jittered exponential
 * backoff), resubscribes and resumes every channel from the last seq it saw,
 * and never hands a message to a handler twice. Requests made while it is
 * not connected wait in a bounded queue and are sent, in order, once it is.
 *
 * `status` is "connecting", "open", "resubscribing" (connected, but a
 * channel is not subscribed yet: being resumed after a reconnect, or retried
 * because its owner worker is restarting) or "closed".
 * Events (addEventListener): "state" (detail: the new status),
 * "resync" (detail: {channel, reply}) when a resume could not recover every
 * missed message, or the server announced a hole it cannot fill in a live
 * subscription (the `resync` frame; the subscription goes on after it), "broadcast" (detail: data), "inbox" (detail: msg), and
 * "suberror" (detail: {channel, error}) when the server refused a channel
 * for good (forbidden, bad name): the client has dropped it, and
 * "refresh_needed" (detail: {exp}) when the token is about to expire and no
 * `getToken` option can fetch a new one (call refresh(token) yourself).
 *
 * Tokens: with a `getToken()` option (an async function returning a JWT, as
 * in centrifuge-js) the client fetches a fresh token before connecting when
 * it has none or it expires within 10 s, and answers the server's
 * `refresh_needed` with `refresh`, so a long-lived page never outlives its
 * token.
 */
export class SyncClient extends EventTarget {
  constructor(url, {
    token = null, getToken = null, minDelay = 250, maxDelay = 8000, autoAck = true, queueLimit = 1000,
    queueTimeout = 10000,
  } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.autoAck = autoAck;
    this.queueLimit = queueLimit;
    this.queueTimeout = queueTimeout;
    this.status = "closed";
    this.uid = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject}: sent, awaiting a reply
    this._queue = []; // {op, fields, resolve, reject, timer}: waiting for a connection
    // channel -> {seq, epoch, handlers, resume, live, joined, inflight, failures, timer, waiters}
    this._channels = new Map();
    this._leaving = new Map(); // channel -> promise of its unsub, which a new sub waits for
    this._attempt = 0;
    this._stopped = false;
    this._inboxSeq = 0;
  }

  /** Opens the connection (and keeps it open until close()). */
  connect() {
    this._stopped = false;
    if (!this._ws) this._open();
    return this;
  }

  /** Closes for good: queued requests and pending subscribe() calls reject with `not_connected`. */
  close() {
    this._stopped = true;
    const error = () => new SyncError({ code: "not_connected", message: "client closed" });
    for (const entry of this._queue.splice(0)) {
      clearTimeout(entry.timer);
      entry.reject(error());
    }
    for (const sub of this._channels.values()) {
      clearTimeout(sub.timer);
      sub.timer = null;
      for (const { reject } of sub.waiters.splice(0)) reject(error());
    }
    if (this._ws) this._ws.close(1000);
  }

  _setState(state) {
    if (this.status === state) return;
    this.status = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _isOpen() {
    return this._ws !== null && this._ws.readyState === WebSocket.OPEN;
  }

  /** "open" once every channel that was subscribed (or failed) is live again. */
  _updateState() {
    if (!this._isOpen()) return;
    let waiting = false;
    for (const sub of this._channels.values()) {
      if (!sub.live && (sub.joined || sub.failures > 0)) waiting = true;
    }
    this._setState(waiting ? "resubscribing" : "open");
  }

  _open() {
    this._setState("connecting");
    if (this.getToken && this._tokenExpiresWithin(10)) {
      // A token that would be refused (or soon closed) is not worth a dial.
      Promise.resolve()
        .then(() => this.getToken())
        .then((token) => { this.token = token; }, () => {})
        .then(() => { if (!this._stopped && !this._ws) this._dial(); });
      return;
    }
    this._dial();
  }

  /** True without a token, or when its `exp` is less than `seconds` away. */
  _tokenExpiresWithin(seconds) {
    if (!this.token) return true;
    try {
      const exp = JSON.parse(atob(this.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp;
      return exp - Date.now() / 1000 < seconds;
    } catch {
      return true;
    }
  }

  _dial() {
    const url = this.token ? `${this.url}${this.url.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token)}` : this.url;
    const ws = new WebSocket(url);
    this._ws = ws;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._attempt = 0;
      // The token rides on the URL, so the socket is authenticated already:
      // subscriptions first, then what was queued, in the order it was asked.
      for (const channel of this._channels.keys()) this._resubscribe(channel);
      for (const entry of this._queue.splice(0)) {
        clearTimeout(entry.timer);
        this._send(entry.op, entry.fields).then(entry.resolve, entry.reject);
      }
      this._updateState();
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onFrame(JSON.parse(event.data));
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      // Sent but unanswered: the server may or may not have acted on them.
      for (const { reject } of this._pending.values()) reject(new SyncError({ code: "disconnected", message: "connection closed" }));
      this._pending.clear();
      // Every channel is resubscribed on the next connection.
      for (const sub of this._channels.values()) {
        sub.live = false;
        clearTimeout(sub.timer);
        sub.timer = null;
      }
      this._setState("closed");
      if (this._stopped) return;
      const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
      setTimeout(() => { if (!this._stopped && !this._ws) this._open(); }, delay / 2 + Math.random() * delay / 2);
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
    } else if (frame.op === "resync") {
      // A hole the server could not fill: carry on after it, and tell the page.
      const sub = this._channels.get(frame.channel);
      if (!sub) return;
      sub.seq = frame.seq;
      sub.epoch = frame.epoch;
      this.dispatchEvent(new CustomEvent("resync", { detail: { channel: frame.channel, reply: frame } }));
    } else if (frame.op === "refresh_needed") {
      this._onRefreshNeeded(frame);
    }
  }

  /** The server's warning before the token expires: fetch and send a new one. */
  async _onRefreshNeeded(frame) {
    if (!this.getToken) {
      this.dispatchEvent(new CustomEvent("refresh_needed", { detail: { exp: frame.exp } }));
      return;
    }
    // Retried until it works or the token runs out (then the server closes
    // with token_expired and the reconnect fetches a token anyway).
    for (let delay = 1000; Date.now() / 1000 < frame.exp; delay = Math.min(delay * 2, 8000)) {
      try {
        await this.refresh(await this.getToken());
        return;
      } catch {
        await new Promise((r) => setTimeout(r, delay / 2 + Math.random() * delay / 2));
      }
    }
  }

  /** Replaces the connection's token (same user) before the old one expires. */
  async refresh(token) {
    const reply = await this.request("refresh", { token });
    this.token = token;
    return reply;
  }

  _onInbox(frame) {
    if (frame.seq <= this._inboxSeq) return; // a redelivery already handled
    this._inboxSeq = frame.seq;
    this.dispatchEvent(new CustomEvent("inbox", { detail: frame }));
    if (this.autoAck) this.ack(frame.seq).catch(() => {});
  }

  /**
   * Sends a request; resolves with the reply, rejects with SyncError. While
   * not connected (before the first connection or while reconnecting) it
   * waits in a queue of at most `queueLimit` requests (beyond: `queue_full`)
   * for at most `queueTimeout` ms (then: `timeout`), like Socket.IO's buffer.
   */
  request(op, fields = {}) {
    if (this._stopped) return Promise.reject(new SyncError({ code: "not_connected", message: "client closed" }));
    if (this._isOpen()) return this._send(op, fields);
    if (this._queue.length >= this.queueLimit) {
      return Promise.reject(new SyncError({ code: "queue_full", message: `not connected and ${this.queueLimit} requests already queued` }));
    }
    return new Promise((resolve, reject) => {
      const entry = { op, fields, resolve, reject };
      entry.timer = setTimeout(() => {
        this._queue.splice(this._queue.indexOf(entry), 1);
        reject(new SyncError({ code: "timeout", message: `not connected within ${this.queueTimeout} ms` }));
      }, this.queueTimeout);
      this._queue.push(entry);
    });
  }

  /** Sends on the open socket now. */
  _send(op, fields) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this._ws.send(JSON.stringify({ op, id, ...fields }));
    });
  }

  /**
   * Subscribes `handler` to a channel's messages (and join/leave events).
   * `since`/`epoch` start from a known point, such as a state() snapshot.
   * Resolves once the server has subscribed this connection (waiting for a
   * connection and retrying while the owner restarts, as long as it takes);
   * rejects if the server refuses the channel (e.g. `forbidden`), or with
   * `unsubscribed`/`not_connected` if unsubscribe()/close() comes first.
   */
  subscribe(channel, handler, { since = null, epoch = null } = {}) {
    let sub = this._channels.get(channel);
    if (!sub) {
      sub = {
        seq: since ?? 0, epoch, handlers: new Set(), resume: since !== null,
        live: false, // subscribed on the current connection
        joined: false, // was live once: losing it means "resubscribing"
        inflight: null, // the pending `sub` request
        failures: 0, timer: null, waiters: [],
      };
      this._channels.set(channel, sub);
    }
    sub.handlers.add(handler);
    if (sub.live) return Promise.resolve();
    const done = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    this._resubscribe(channel);
    return done;
  }

  /** Sends `sub` for a channel not live on this connection, resuming from its last seq. */
  _resubscribe(channel) {
    const sub = this._channels.get(channel);
    if (!sub || sub.live || sub.inflight || this._stopped || !this._isOpen()) return;
    const leaving = this._leaving.get(channel);
    if (leaving) {
      // An earlier unsubscribe of this channel is still on its way: after it.
      leaving.catch(() => {}).then(() => this._resubscribe(channel));
      return;
    }
    clearTimeout(sub.timer);
    sub.timer = null;
    const fields = { channel };
    if (sub.resume) {
      fields.since = sub.seq;
      if (sub.epoch) fields.epoch = sub.epoch;
    }
    const ws = this._ws;
    sub.inflight = this._send("sub", fields).then((reply) => {
      sub.inflight = null;
      sub.live = true;
      if (this._channels.get(channel) !== sub) return; // left meanwhile: unsubscribe() sends the unsub
      if (reply.recovered === false) {
        this.dispatchEvent(new CustomEvent("resync", { detail: { channel, reply } }));
      }
      if (!sub.resume || reply.recovered === false) sub.seq = reply.seq;
      sub.epoch = reply.epoch;
      sub.resume = true;
      this._live(sub);
    }, (e) => {
      sub.inflight = null;
      if (this._channels.get(channel) !== sub || this._ws !== ws) return; // left, or the next connection resubscribes
      if (e.code === "already_subscribed") return this._live(sub);
      if (RETRYABLE.has(e.code)) {
        // The owner worker is restarting: retry with jittered backoff until
        // it answers, the channel is left, or the client is closed.
        const delay = Math.min(this.maxDelay, this.minDelay * 2 ** sub.failures++);
        sub.timer = setTimeout(() => {
          sub.timer = null;
          if (this._channels.get(channel) === sub && this._ws === ws) this._resubscribe(channel);
        }, delay / 2 + Math.random() * delay / 2);
        this._updateState();
        return;
      }
      // Refused for good (forbidden, bad channel name): stop trying.
      this._channels.delete(channel);
      const waiters = sub.waiters.splice(0);
      for (const { reject } of waiters) reject(e);
      if (!waiters.length) this.dispatchEvent(new CustomEvent("suberror", { detail: { channel, error: e } }));
      this._updateState();
    });
  }

  _live(sub) {
    sub.live = true;
    sub.joined = true;
    sub.failures = 0;
    for (const { resolve } of sub.waiters.splice(0)) resolve();
    this._updateState();
  }

  /** Leaves a channel: its handlers get nothing more and retries stop. */
  async unsubscribe(channel) {
    const sub = this._channels.get(channel);
    if (!sub) return;
    this._channels.delete(channel);
    clearTimeout(sub.timer);
    sub.timer = null;
    for (const { reject } of sub.waiters.splice(0)) reject(new SyncError({ code: "unsubscribed", message: `left ${channel}` }));
    this._updateState();
    // Only a live (or about to be live) subscription needs an `unsub` on the
    // wire; a closed connection has none to undo.
    const ws = this._ws;
    const unsub = () => (sub.live && this._ws === ws && this._isOpen() ? this._send("unsub", { channel }) : undefined);
    if (!sub.inflight) return unsub();
    const leave = sub.inflight.catch(() => {}).then(() => {
      if (this._leaving.get(channel) === leave) this._leaving.delete(channel);
      return unsub();
    });
    this._leaving.set(channel, leave);
    return leave;
  }

  publish(channel, data, { ttl } = {}) {
    return this.request("pub", { channel, data, ...(ttl ? { ttl } : {}) });
  }

  /**
   * Up to `limit` retained messages after `since`, oldest first. The server
   * answers in pages (at most 1000 messages and a byte budget each); this
   * follows them until it has `limit` (`Infinity`: all) or none are left.
   * `more`/`cursor`: stopped at `limit` with more retained; pass `cursor` as
   * the next `since`.
   */
  async history(channel, since = 0, limit = 100) {
    const messages = [];
    let reply;
    do {
      const want = Math.max(1, Math.min(limit - messages.length, 1000));
      reply = await this.request("history", { channel, since, limit: want });
      messages.push(...reply.messages);
      if (reply.more) since = reply.cursor;
    } while (reply.more && messages.length < limit);
    const more = Boolean(reply.more);
    return { seq: reply.seq, epoch: reply.epoch, messages, more, ...(more ? { cursor: reply.cursor } : {}) };
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

  /**
   * Every key of a channel and the seq to subscribe `since`. The server
   * answers in pages; this follows them all. `seq` is the first page's:
   * later pages may already hold changes replayed after it, so apply a
   * state message only when its `version` is newer than the key's.
   */
  async state(channel) {
    for (;;) {
      const first = await this.request("state", { channel, limit: 1000 });
      const keys = { ...first.keys };
      let page = first;
      while (page.more && page.epoch === first.epoch) {
        page = await this.request("state", { channel, after: page.cursor, limit: 1000 });
        Object.assign(keys, page.keys);
      }
      // The history was reset between pages: read it again.
      if (page.epoch !== first.epoch) continue;
      return { seq: first.seq, epoch: first.epoch, keys };
    }
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
