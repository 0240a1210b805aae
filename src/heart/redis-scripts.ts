/*
 * The Lua scripts of the Redis store: the steps that must read and write in one go. Each runs
 * on one user's keys, which share a slot (redis-keys.ts), so they work on a cluster too.
 */
import { createHash } from 'node:crypto'
import type { Cluster, Redis } from 'ioredis'
import { EPISODES_LUA } from './redis-episodes.js'

/** A Lua script run by its SHA, loaded again when Redis has forgotten it (after a restart). */
class LuaScript {
  private readonly sha: string
  constructor (private readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex')
  }

  async run (redis: Redis | Cluster, keys: string[], args: Array<string | number>): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args)
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
      return await redis.eval(this.source, keys.length, ...keys, ...args)
    }
  }
}

/*
 * Ingest, all or nothing: types are checked before the first write (Redis does not roll a
 * script back), and the shebang makes Redis refuse the whole script up front when it is out of memory.
 * Steps: (1) check key types, (2) per reading: a resend (its own ts is already in history) adds
 * nothing and answers the stored id; otherwise append it, remember its ts, and move the current
 * value when it is not older (the ts hash is read and written once per call, not per reading),
 * (3) trim history and forget the trimmed readings' ts, (4) publish
 * the new readings as the JSON array the feed reads (redis-feed.ts). Nothing new: nothing published.
 *
 * KEYS[1] current  the legacy key: the current bpm as a decimal string
 * KEYS[2] meta     `<ts>:<bpm>` of the current value
 * KEYS[3] history  stream of readings, fields bpm and ts; trimmed to ARGV[1] entries
 * KEYS[4] idsByTs  hash ts → history id of the readings in history that carried their own ts
 * ARGV[1] HISTORY_MAX; ARGV[2] PUBLISH or SPUBLISH; ARGV[3] the live channel;
 * KEYS[5…8] the alert keys: rules, state, log, alerts (redis-episodes.ts)
 * ARGV[4] the user id; ARGV[5] EPISODES_MAX;
 * ARGV[6…] one triple per reading: bpm, ts, own (1: the device sent ts; 0: server time, never a duplicate).
 * (5) runs every newly stored reading through the user's alert rules, in request order.
 * Returns { ids (one per reading, in order), duplicates, the alert transitions as JSON, and the
 * user's newest ts when the offline rule is on (else false) }.
 * The source is exported for the bench's floor (bench/baseline/server.mjs), which runs it too.
 */
export const INGEST_LUA = `#!lua
${EPISODES_LUA}
local current, meta, history, idsByTs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local historyMax = tonumber(ARGV[1])
-- After HISTORY_MAX is lowered, trimming catches up this much per call rather than blocking Redis once.
local TRIM_STEP = 10000

local expected = { 'string', 'string', 'stream', 'hash', 'hash', 'hash', 'stream', 'hash' }
for i = 1, 8 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= expected[i] then
    return redis.error_reply('WRONGTYPE heart keys hold unexpected types; nothing written')
  end
end

local newest = -1
local m = redis.call('GET', meta)
if m then newest = tonumber(string.match(m, '^(%d+)')) or -1 end

-- Redis commands over a list of arguments, in slices (Lua's unpack stops at about 8000 values); answers joined.
local function sliced (cmd, key, list)
  local out = {}
  for i = 1, #list, 1000 do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    if type(part) == 'table' then
      for j = 1, #part do out[i + j - 1] = part[j] end
    end
  end
  return out
end

-- The duplicate check reads the ts of the whole request at once; a ts repeated within it is a
-- resend of its first reading.
local known, own = {}, {}
for i = 6, #ARGV, 3 do
  if ARGV[i + 2] == '1' then own[#own + 1] = ARGV[i + 1] end
end
local storedIds = sliced('HMGET', idsByTs, own)
for j = 1, #own do
  if storedIds[j] then known[own[j]] = storedIds[j] end
end

local ids, msgs, duplicates, newTs, newBpm = {}, {}, 0, nil, nil
local fresh, remember = {}, {}
for i = 6, #ARGV, 3 do
  local bpm, ts, isOwn = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local stored = isOwn and known[ts]
  if stored then
    ids[#ids + 1] = stored
    duplicates = duplicates + 1
  else
    local id = redis.call('XADD', history, '*', 'bpm', bpm, 'ts', ts)
    if isOwn then
      known[ts] = id
      remember[#remember + 1] = ts
      remember[#remember + 1] = id
    end
    ids[#ids + 1] = id
    fresh[#fresh + 1] = { bpm, ts }
    msgs[#msgs + 1] = '{"id":"' .. id .. '","bpm":' .. bpm .. ',"ts":' .. ts .. '}'
    -- Ties go to the later reading: current is then the one history lists last among the newest.
    local t = tonumber(ts)
    if t >= newest then newest, newTs, newBpm = t, ts, bpm end
  end
end
if #msgs == 0 then return { ids, duplicates, {} } end
if #remember > 0 then redis.call('HSET', idsByTs, unpack(remember)) end

if newBpm then
  redis.call('SET', current, newBpm)
  redis.call('SET', meta, newTs .. ':' .. newBpm)
end

local len = redis.call('XLEN', history)
local excess = math.min(len - historyMax, #msgs + TRIM_STEP)
if excess > 0 then
  -- Forget the trimmed readings' ts, where the hash still names that very reading.
  local tsOf, idOf = {}, {}
  for _, entry in ipairs(redis.call('XRANGE', history, '-', '+', 'COUNT', excess)) do
    local fields = entry[2]
    for f = 1, #fields, 2 do
      if fields[f] == 'ts' then
        tsOf[#tsOf + 1] = fields[f + 1]
        idOf[#idOf + 1] = entry[1]
      end
    end
  end
  local named, forget = sliced('HMGET', idsByTs, tsOf), {}
  for j = 1, #tsOf do
    if named[j] == idOf[j] then forget[#forget + 1] = tsOf[j] end
  end
  sliced('HDEL', idsByTs, forget)
  redis.call('XTRIM', history, 'MAXLEN', len - excess)
end

redis.call(ARGV[2], ARGV[3], '[' .. table.concat(msgs, ',') .. ']')

local ep = Episodes.new({ rules = KEYS[5], state = KEYS[6], log = KEYS[7], alerts = KEYS[8] }, ARGV[4], ARGV[2], ARGV[3], ARGV[5])
local watchOffline = false
if ep:load() then
  for _, r in ipairs(fresh) do ep:reading(r[1], r[2]) end
  ep:save()
  -- With the offline rule on, the caller puts the user on the offline sweep (a key of no one slot).
  if ep.rules.offline then watchOffline = string.format('%d', newest) end
end
return { ids, duplicates, ep.out, watchOffline }
`
export const INGEST = new LuaScript(INGEST_LUA)

/*
 * The user went offline: opens the \`offline\` episode once, if the rule is on, none is open and
 * no reading came after the one the caller saw (every instance watching the user asks at once).
 * KEYS: meta, rules, state, log, alerts. ARGV: the last reading's ts as the caller saw it,
 * openedAt, user id, EPISODES_MAX, PUBLISH or SPUBLISH, channel. Returns the episode's JSON or false.
 */
export const OPEN_OFFLINE = new LuaScript(`#!lua
${EPISODES_LUA}
local ep = Episodes.new({ rules = KEYS[2], state = KEYS[3], log = KEYS[4], alerts = KEYS[5] }, ARGV[3], ARGV[5], ARGV[6], ARGV[4])
if not ep:load() or not ep.rules.offline or ep.state['open:offline'] then return false end
local m = redis.call('GET', KEYS[1])
if not m then return false end
local ts, bpm = string.match(m, '^(%d+):(.*)$')
if ts ~= ARGV[1] then return false end
local last = ep.state.lastTs
if last and tonumber(last) > tonumber(ts) then return false end
ep:open('offline', bpm, ts, ARGV[2])
ep:save()
return ep.out[1]
`)

/* Takes a user off the offline sweep if its due time is still the one seen. KEYS: due. ARGV: user, score. */
export const SWEPT = new LuaScript(`#!lua
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
`)

/*
 * Withdraws a grant and announces it, in one step on the owner's slot: the owner's set is what
 * access is decided by, so once this ran access is fully withdrawn (and every instance told), and
 * until it runs it is fully granted. KEYS: viewers. ARGV: viewer, PUBLISH or SPUBLISH, channel,
 * announcement. Returns 1 when there was a grant.
 */
export const REVOKE = new LuaScript(`#!lua
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call(ARGV[2], ARGV[3], ARGV[4])
return removed
`)

/*
 * Adds a viewer unless the owner already has the maximum: the check and the write in one step.
 * The viewer's own `watching` set is a second write (another slot on a cluster): reads go by the
 * owner's set, so a grant interrupted between the two still reads as granted. KEYS: viewers. ARGV: viewer, max.
 */
export const GRANT = new LuaScript(`#!lua
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
`)

/*
 * Devices of one owner, all on the owner's slot. The cap check and the write are one step.
 * KEYS: devices. ARGV: device id, record (JSON), max. Returns 1, or 0 when the cap refused it.
 */
export const ADD_DEVICE = new LuaScript(`#!lua
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

/* KEYS: devices, devices-seen. ARGV: device id. Returns 1 when the device existed, else 0. */
export const REMOVE_DEVICE = new LuaScript(`#!lua
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
`)

/*
 * A device key's check and its lastSeenAt in one round trip. Comparing hashes with ~= is not
 * constant-time, which is harmless here: an attacker who learns a prefix of a SHA-256 learns
 * nothing about the 256-bit secret behind it.
 * KEYS: devices, devices-seen. ARGV: device id, key hash, now. Returns 1 when the key is the device's.
 */
export const VERIFY_DEVICE = new LuaScript(`#!lua
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or cjson.decode(record)['keyHash'] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
`)

/* Current value, newest history id and the open alert episodes, read together. KEYS: current, meta, history, alert state, alerts. */
export const SNAPSHOT = new LuaScript(`#!lua flags=no-writes
local v = redis.call('MGET', KEYS[1], KEYS[2])
local last = false
if redis.call('EXISTS', KEYS[3]) == 1 then
  local e = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if e[1] then last = e[1][1] end
end
local open = {}
local fields = redis.call('HGETALL', KEYS[4])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'open:' then
    local text = redis.call('HGET', KEYS[5], string.match(fields[i + 1], '^([^,]*),'))
    if text then open[#open + 1] = text end
  end
end
return { v[1], v[2], last, open }
`)

/*
 * Readings after an id, and whether any after it may have been trimmed: the stream has lost
 * entries (entries-added > length) and `since` is older than the oldest entry kept. (Redis does
 * not record which ids trimming removed, so a client whose `since` was exactly the newest trimmed
 * entry is told `truncated` although it missed nothing.) KEYS: history. ARGV: since, count.
 */
export const HISTORY_SINCE = new LuaScript(`#!lua flags=no-writes
if redis.call('EXISTS', KEYS[1]) == 0 then return { {}, 0 } end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local len, added, first = 0, 0, nil
for i = 1, #info, 2 do
  if info[i] == 'length' then len = info[i + 1]
  elseif info[i] == 'entries-added' then added = info[i + 1]
  elseif info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
local readings = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local truncated = 0
if added > len and first then
  local fms, fseq = string.match(first, '^(%d+)-(%d+)$')
  local sms, sseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
  if tonumber(sms) < tonumber(fms) or (tonumber(sms) == tonumber(fms) and tonumber(sseq) < tonumber(fseq)) then truncated = 1 end
end
return { readings, truncated }
`)
