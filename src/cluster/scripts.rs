//! The Lua scripts. Each runs atomically on the one slot of a channel's
//! hash tag, so a publish's seq, stream entry and pub/sub message, and a
//! compare-and-set with its message, can never be seen half done, by any
//! server.

/// A channel's epoch, made if none (the one rule every script that may
/// be a channel's first touch follows). KEYS[2]: epoch. ARGV[1]: the epoch
/// to make. Leaves `epoch` set.
const EPOCH: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[1])
  epoch = ARGV[1]
end
"#;

/// Publish (also `set`/`del`). KEYS: seq, epoch, log, state, idempotency.
/// ARGV: 1 epoch to make if none, 2 data, 3 expires (ms), 4 MAXLEN,
/// 5 topic, 6 channel as JSON, 7 idempotency window in s ("0": no key),
/// 8 "" | "set" | "del", 9 state key, 10 state key as JSON, 11 value JSON,
/// 12 expected version, 13 the channel's history_ttl (ms): a log left
/// alone that long holds nothing live and goes.
/// Returns {"ok", seq, version} | {"dup", seq} | {"conflict", version, value}.
pub fn publish() -> String {
    format!(
        "{EPOCH}{}",
        r#"
if ARGV[7] ~= '0' then
  local first = redis.call('GET', KEYS[5])
  if first then return {'dup', tonumber(first)} end
end
local data = ARGV[2]
local version = 0
if ARGV[8] ~= '' then
  local k = ARGV[9]
  local current = tonumber(redis.call('HGET', KEYS[4], 'v:' .. k) or '0')
  local expected = tonumber(ARGV[12])
  -- As on one node (owner/state.rs): an absent key (never set, or
  -- deleted) takes version 0 too, and deleting it is a conflict.
  local absent = redis.call('HEXISTS', KEYS[4], 'd:' .. k) == 0
  local matches = current == expected or (absent and expected == 0)
  if not matches or (absent and ARGV[8] == 'del') then
    return {'conflict', current, redis.call('HGET', KEYS[4], 'd:' .. k)}
  end
  version = current + 1
  local value = 'null'
  if ARGV[8] == 'set' then
    value = ARGV[11]
    redis.call('HSET', KEYS[4], 'v:' .. k, version, 'd:' .. k, value)
  else
    redis.call('HSET', KEYS[4], 'v:' .. k, version)
    redis.call('HDEL', KEYS[4], 'd:' .. k)
  end
  data = '{"key":' .. ARGV[10] .. ',"value":' .. value .. ',"version":' .. version .. '}'
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], seq .. '-0', 'd', data, 'e', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[13])
if ARGV[7] ~= '0' then
  redis.call('SET', KEYS[5], seq, 'NX', 'EX', ARGV[7])
end
local line = '{"op":"msg","channel":' .. ARGV[6] .. ',"seq":' .. seq .. ',"data":' .. data .. '}\n'
redis.call('PUBLISH', ARGV[5], epoch .. ' ' .. seq .. ' ' .. line)
return {'ok', seq, version}
"#
    )
}

/// A channel's seq and epoch (made if none: a `sub` to a channel never
/// published to learns the epoch it will keep), up to ARGV[3] messages
/// from id ARGV[2] on, and its oldest retained entry.
/// An inbox's replay (ARGV[4] = "1") starts after its stored ack.
/// KEYS: seq, epoch, log, ack. ARGV: 1 epoch to make if none, 2 after,
/// 3 count, 4 from the ack.
pub fn range() -> String {
    format!(
        "{EPOCH}{}",
        r#"
local seq = redis.call('GET', KEYS[1]) or '0'
local after = tonumber(ARGV[2])
if ARGV[4] == '1' then
  after = math.max(after, tonumber(redis.call('GET', KEYS[4]) or '0'))
end
local rows = {}
if tonumber(ARGV[3]) > 0 then
  rows = redis.call('XRANGE', KEYS[3], (after + 1) .. '-0', '+', 'COUNT', ARGV[3])
end
local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
return {seq, epoch, rows, first}
"#
    )
}

/// An inbox's cumulative ack, kept at its highest (acks from connections
/// on several servers may arrive out of order). KEYS: ack. ARGV: 1 seq.
pub const ACK: &str = r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"#;

/// A channel's seq, epoch (made if none), keyed state and live presence
/// members. KEYS: seq, epoch, state, presence. ARGV: 1 epoch to make if
/// none, 2 now (ms).
pub fn lookup() -> String {
    format!(
        "{EPOCH}{}",
        r#"
local seq = redis.call('GET', KEYS[1]) or '0'
return {seq, epoch, redis.call('HGETALL', KEYS[3]),
        redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[2], '+inf')}
"#
    )
}

/// Whether `uid` has a live member (any server) in presence set `key`.
const PRESENT: &str = r#"
local function present(key, uid, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    local nl = string.find(m, '\n', 1, true)
    if nl and string.sub(m, nl + 1) == uid then return true end
  end
  return false
end
"#;

/// This server's member `node \n uid` joins (ARGV[5] = "1", scored by its
/// deadline) or leaves; the join or leave line goes to the topic only when
/// the user's presence across all servers changes. KEYS: presence.
/// ARGV: 1 uid, 2 node, 3 deadline (ms), 4 now (ms), 5 joined, 6 topic
/// ("" for none), 7 join payload, 8 leave payload.
pub fn presence() -> String {
    format!(
        "{PRESENT}{}",
        r#"
local member = ARGV[2] .. '\n' .. ARGV[1]
if ARGV[5] == '1' then
  local before = present(KEYS[1], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[3], member)
  if not before and ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
else
  local removed = redis.call('ZREM', KEYS[1], member)
  if removed == 1 and ARGV[6] ~= '' and not present(KEYS[1], ARGV[1], ARGV[4]) then
    redis.call('PUBLISH', ARGV[6], ARGV[8])
  end
end
return 1
"#
    )
}

/// Deletes a channel's expired messages from the head of its log (a
/// message's own `ttl` may be shorter than its elders': those wait for
/// MAXLEN, and reads skip them). KEYS: log. ARGV: 1 now (ms).
pub const TRIM: &str = r#"
local deleted = 0
while true do
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 100)
  if #head == 0 then return deleted end
  for _, entry in ipairs(head) do
    local fields, expires = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then expires = tonumber(fields[i + 1]) end
    end
    if not expires or expires > tonumber(ARGV[1]) then return deleted end
    redis.call('XDEL', KEYS[1], entry[1])
    deleted = deleted + 1
  end
end
"#;

/// Removes members past their deadline (a server that died) and returns
/// the uids no longer present anywhere: the caller publishes their leave.
/// Only the one sweeper whose ZREM removed a member reports it.
/// KEYS: presence. ARGV: 1 now (ms).
pub fn sweep() -> String {
    format!(
        "{PRESENT}{}",
        r#"
local left = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) do
  if redis.call('ZREM', KEYS[1], m) == 1 then
    local nl = string.find(m, '\n', 1, true)
    if nl then
      local uid = string.sub(m, nl + 1)
      if not present(KEYS[1], uid, ARGV[1]) then table.insert(left, uid) end
    end
  end
end
return left
"#
    )
}

/// An unacked direct message, again: sent (on the inbox's topic) only when
/// the ack has not passed it and its user has a live member anywhere.
/// KEYS: ack, presence. ARGV: 1 seq, 2 uid, 3 now (ms), 4 topic, 5 payload,
/// 6 "send" or "check" (before a dead letter: the ack only).
/// Returns {"acked" | "unacked" | "offline" | "sent", ack}.
pub fn redeliver() -> String {
    format!(
        "{PRESENT}{}",
        r#"
local acked = tonumber(redis.call('GET', KEYS[1]) or '0')
if acked >= tonumber(ARGV[1]) then return {'acked', acked} end
if ARGV[6] == 'check' then return {'unacked', acked} end
if not present(KEYS[2], ARGV[2], ARGV[3]) then return {'offline', acked} end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'sent', acked}
"#
    )
}
