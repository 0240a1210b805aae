/*
 * Alert episodes in Lua: the rule of episodes.ts, run inside the ingest script (and by
 * OPEN_OFFLINE) so that an episode opens or closes in the same atomic step as the reading that
 * causes it, once however many instances receive readings at the same moment.
 *
 * Keys, all in the user's slot (redis-keys.ts):
 * - rules   `{…}:alert-rules`    hash high, low, sustainS, offline (1/0)
 * - state   `{…}:alert-state`    hash `open:<kind>` → "alertId,bpm,ts,openedAt"; `pending:<kind>` → ts; `lastTs`
 * - log     `{…}:alert-log`      stream, one entry per episode (its id is the alertId), capped at EPISODES_MAX
 * - alerts  `{…}:alerts`         hash alertId → the episode's JSON as it stands (open, then closed)
 * Each transition is published on the live channel as `{"alert":{…}}`.
 *
 * A call reads the rules and the state once (`load`: two HGETALLs), runs every reading through the
 * rule in a Lua table, and writes back only the fields that changed (`save`: at most one HSET and
 * one HDEL): the cost of the rules is then a few commands per call, not several per reading.
 */
import { HYSTERESIS_BPM } from './episodes.js'

export const EPISODES_LUA = `
local Episodes = {}
Episodes.__index = Episodes

local FIELDS = {
  high = { open = 'open:high', pending = 'pending:high' },
  low = { open = 'open:low', pending = 'pending:low' },
  offline = { open = 'open:offline' }
}

-- k: { rules, state, log, alerts }; publish: PUBLISH or SPUBLISH; max: EPISODES_MAX.
function Episodes.new (k, userId, publish, channel, max)
  return setmetatable({ k = k, user = userId, publish = publish, channel = channel, max = tonumber(max), out = {} }, Episodes)
end

-- Reads the rules and the state hash. False for a user with no rules and nothing open: nothing to do.
function Episodes:load ()
  local r = redis.call('HGETALL', self.k.rules)
  local s = redis.call('HGETALL', self.k.state)
  if #r == 0 and #s == 0 then return false end
  local rules = {}
  for i = 1, #r, 2 do rules[r[i]] = r[i + 1] end
  self.rules = { high = tonumber(rules.high), low = tonumber(rules.low), sustainMs = (tonumber(rules.sustainS) or 0) * 1000, offline = rules.offline == '1' }
  local state, saved = {}, {}
  for i = 1, #s, 2 do
    state[s[i]] = s[i + 1]
    saved[s[i]] = s[i + 1]
  end
  self.state, self.saved = state, saved
  return true
end

-- Writes the fields of the state that differ from what load read: one HSET, one HDEL, each only if needed.
function Episodes:save ()
  local set, del = {}, {}
  for f, v in pairs(self.state) do
    if self.saved[f] ~= v then
      set[#set + 1] = f
      set[#set + 1] = v
    end
  end
  for f in pairs(self.saved) do
    if self.state[f] == nil then del[#del + 1] = f end
  end
  if #set > 0 then redis.call('HSET', self.k.state, unpack(set)) end
  if #del > 0 then redis.call('HDEL', self.k.state, unpack(del)) end
end

local function json (e, user, kind, state, closedAt)
  local s = '{"alertId":"' .. e.id .. '","userId":"' .. user .. '","kind":"' .. kind .. '","state":"' .. state
    .. '","bpm":' .. (e.bpm ~= '' and e.bpm or 'null') .. ',"ts":' .. (e.ts ~= '' and e.ts or 'null') .. ',"openedAt":' .. e.openedAt
  if closedAt then s = s .. ',"closedAt":' .. closedAt end
  return s .. '}'
end

function Episodes:emit (text)
  self.out[#self.out + 1] = text
  redis.call(self.publish, self.channel, '{"alert":' .. text .. '}')
end

function Episodes:open (kind, bpm, ts, openedAt)
  local k = self.k
  local e = { id = redis.call('XADD', k.log, '*', 'kind', kind), bpm = bpm, ts = ts, openedAt = openedAt }
  self.state[FIELDS[kind].open] = e.id .. ',' .. bpm .. ',' .. ts .. ',' .. openedAt
  local text = json(e, self.user, kind, 'open', nil)
  redis.call('HSET', k.alerts, e.id, text)
  local excess = redis.call('XLEN', k.log) - self.max
  if excess > 0 then
    for _, entry in ipairs(redis.call('XRANGE', k.log, '-', '+', 'COUNT', excess)) do
      redis.call('HDEL', k.alerts, entry[1])
    end
    redis.call('XTRIM', k.log, 'MAXLEN', self.max)
  end
  self:emit(text)
end

function Episodes:close (kind, closedAt)
  local field = FIELDS[kind].open
  local id, bpm, ts, openedAt = string.match(self.state[field], '^([^,]*),([^,]*),([^,]*),([^,]*)$')
  local e = { id = id, bpm = bpm, ts = ts, openedAt = openedAt }
  self.state[field] = nil
  local text = json(e, self.user, kind, 'closed', closedAt)
  if redis.call('HEXISTS', self.k.alerts, id) == 1 then redis.call('HSET', self.k.alerts, id, text) end
  self:emit(text)
end

-- One stored reading (bpm and ts as the strings stored), in request order, after load.
function Episodes:reading (bpm, ts)
  local s, rules = self.state, self.rules
  local t = tonumber(ts)
  local last = tonumber(s.lastTs)
  if last and t < last then return end
  s.lastTs = ts
  local b = tonumber(bpm)
  if s['open:offline'] then self:close('offline', ts) end
  for _, kind in ipairs({ 'high', 'low' }) do
    local limit = rules[kind]
    local f = FIELDS[kind]
    if s[f.open] then
      s[f.pending] = nil
      local back = limit == nil or (kind == 'high' and b <= limit - ${HYSTERESIS_BPM}) or (kind == 'low' and b >= limit + ${HYSTERESIS_BPM})
      if back then self:close(kind, ts) end
    elseif limit == nil or (kind == 'high' and b <= limit) or (kind == 'low' and b >= limit) then
      s[f.pending] = nil
    else
      local since = tonumber(s[f.pending]) or t
      if t - since >= rules.sustainMs then
        s[f.pending] = nil
        self:open(kind, bpm, ts, ts)
      else
        s[f.pending] = string.format('%d', since)
      end
    end
  end
end
`
