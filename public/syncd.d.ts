// Types for syncd.js.
export interface Msg<T = unknown> { op: "msg"; channel: string; seq: number; data: T }
export interface PresenceEvent { op: "join" | "leave"; channel: string; uid: string }
export interface StateChange<V = unknown> { key: string; version: number; value: V | null }

/**
 * Server error codes (docs/protocol.md), plus the client's own:
 * `not_connected` (the client was closed), `queue_full` (more than
 * `queueLimit` requests waiting for a connection), `timeout` (no connection
 * within `queueTimeout` ms), `disconnected` (the connection dropped after the
 * request was sent: it may or may not have been acted on) and `unsubscribed`
 * (unsubscribe() came before a pending subscribe() completed).
 */
export declare class SyncError extends Error {
  code: string;
  current?: { key: string; value: unknown; version: number };
}

export interface ClientOptions {
  /** A JWT, sent on the WebSocket URL (`?token=`). */
  token?: string | null;
  /**
   * Fetches a fresh JWT from your backend. Called before connecting when there
   * is no token or it expires within 10 s, and when the server asks for a
   * refresh shortly before `exp`; the connection then carries on unbroken.
   */
  getToken?: (() => Promise<string> | string) | null;
  /** Reconnect and resubscribe backoff: jittered, from minDelay doubling to maxDelay (ms). Defaults 250 and 8000. */
  minDelay?: number;
  maxDelay?: number;
  /** Acknowledge inbox messages automatically. Default true. */
  autoAck?: boolean;
  /** Most requests that wait for a connection; more reject with `queue_full`. Default 1000. */
  queueLimit?: number;
  /** How long (ms) a request waits for a connection before it rejects with `timeout`. Default 10000. */
  queueTimeout?: number;
}

/**
 * `connecting`: opening a socket. `open`: connected and every channel
 * subscribed. `resubscribing`: connected, but a channel is not subscribed
 * yet (being resumed after a reconnect, or retried with backoff while its
 * owner worker restarts). `closed`: no connection (reconnecting unless
 * close() was called).
 */
export type Status = "connecting" | "open" | "resubscribing" | "closed";

export interface SyncClientEventMap {
  state: CustomEvent<Status>;
  resync: CustomEvent<{ channel: string; reply: Record<string, any> }>;
  broadcast: CustomEvent<unknown>;
  inbox: CustomEvent<Msg>;
  /** The server refused a channel for good while resubscribing (e.g. `forbidden`); it was dropped. */
  suberror: CustomEvent<{ channel: string; error: SyncError }>;
  /** The token expires at `exp` (Unix seconds) and there is no getToken: call refresh(token). */
  refresh_needed: CustomEvent<{ exp: number }>;
}

export declare class SyncClient extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly status: Status;
  uid: string | null;
  connect(): this;
  /** Stops for good: queued requests and pending subscribe() calls reject with `not_connected`. */
  close(): void;
  addEventListener<K extends keyof SyncClientEventMap>(type: K, listener: (event: SyncClientEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** Sent at once when connected; otherwise queued (see queueLimit, queueTimeout) and sent in order on connect. */
  request(op: string, fields?: Record<string, unknown>): Promise<Record<string, any>>;
  /** Resolves once subscribed (after waiting for a connection and retrying `unavailable` as long as needed). */
  subscribe(channel: string, handler: (frame: Msg | PresenceEvent) => void, from?: { since?: number | null; epoch?: string | null }): Promise<void>;
  /** Leaves the channel and stops any retry of its subscription. */
  unsubscribe(channel: string): Promise<void>;
  publish(channel: string, data: unknown, options?: { ttl?: number }): Promise<{ seq: number }>;
  /** Follows the server's pages until `limit` messages (`Infinity`: all retained); `more`/`cursor` when stopped at `limit`. */
  history(channel: string, since?: number, limit?: number): Promise<{ seq: number; epoch: string; messages: Msg[]; more: boolean; cursor?: number }>;
  set(channel: string, key: string, value: unknown, version: number): Promise<{ seq: number; version: number }>;
  del(channel: string, key: string, version: number): Promise<{ seq: number; version: number }>;
  get(channel: string, key: string): Promise<{ key: string; value: unknown; version: number }>;
  /** Every key, following the server's pages; `seq` is the first page's (apply later changes by `version`). */
  state(channel: string): Promise<{ seq: number; epoch: string; keys: Record<string, { value: unknown; version: number }> }>;
  auth(token: string): Promise<{ uid: string }>;
  /** Replaces the connection's token with a newer one for the same user. */
  refresh(token: string): Promise<{ exp: number }>;
  send(uid: string, data: unknown, options?: { ttl?: number }): Promise<{ seq: number }>;
  ack(seq: number): Promise<unknown>;
  presence(channel: string): Promise<{ channel: string; uids: string[] }>;
}
