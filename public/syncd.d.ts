// Types for syncd.js.
export interface Msg<T = unknown> { op: "msg"; channel: string; seq: number; data: T }
export interface PresenceEvent { op: "join" | "leave"; channel: string; uid: string }
export interface StateChange<V = unknown> { key: string; version: number; value: V | null }

export declare class SyncError extends Error {
  code: string;
  current?: { key: string; value: unknown; version: number };
}

export interface ClientOptions { token?: string | null; minDelay?: number; maxDelay?: number; autoAck?: boolean }

export declare class SyncClient extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly status: "connecting" | "open" | "closed";
  uid: string | null;
  connect(): this;
  close(): void;
  request(op: string, fields?: Record<string, unknown>): Promise<Record<string, any>>;
  subscribe(channel: string, handler: (frame: Msg | PresenceEvent) => void, from?: { since?: number | null; epoch?: string | null }): Promise<void>;
  unsubscribe(channel: string): Promise<void>;
  publish(channel: string, data: unknown, options?: { ttl?: number }): Promise<{ seq: number }>;
  history(channel: string, since?: number, limit?: number): Promise<{ seq: number; epoch: string; messages: Msg[] }>;
  set(channel: string, key: string, value: unknown, version: number): Promise<{ seq: number; version: number }>;
  del(channel: string, key: string, version: number): Promise<{ seq: number; version: number }>;
  get(channel: string, key: string): Promise<{ key: string; value: unknown; version: number }>;
  state(channel: string): Promise<{ seq: number; epoch: string; keys: Record<string, { value: unknown; version: number }> }>;
  auth(token: string): Promise<{ uid: string }>;
  send(uid: string, data: unknown, options?: { ttl?: number }): Promise<{ seq: number }>;
  ack(seq: number): Promise<unknown>;
  presence(channel: string): Promise<{ channel: string; uids: string[] }>;
}
