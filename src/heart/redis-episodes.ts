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
 */
import { HYSTERESIS_BPM } from './episodes.js'

export const EPISODES_LUA = `
local Episodes = {}
Episodes.__index = Episodes

-- k: { rules, state, log, alerts }; publish: PUBLISH or SPUBLISH; max: EPISODES_MAX.
function Episodes.new (k, userId, publish, channel, max)
  return setmetatable({ k = k, user = userId, publish = publish, channel = channel, max = tonumber(max), out = {} }, Episodes)
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
  redis.call('HSET', k.state, 'open:' .. kind, e.id .. ',' .. bpm .. ',' .. ts .. ',' .. openedAt)
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

function Episodes:close (kind, fields, closedAt)
  local id, bpm, ts, openedAt = string.match(fields, '^([^,]*),([^,]*),([^,]*),([^,]*)$')
  local e = { id = id, bpm = bpm, ts = ts, openedAt = openedAt }
  redis.call('HDEL', self.k.state, 'open:' .. kind)
  local text = json(e, self.user, kind, 'closed', closedAt)
  if redis.call('HEXISTS', self.k.alerts, id) == 1 then redis.call('HSET', self.k.alerts, id, text) end
  self:emit(text)
end

-- Nothing to do for a user with no rules and nothing open: one EXISTS each, no writes.
function Episodes:active ()
  return redis.call('EXISTS', self.k.rules) == 1 or redis.call('EXISTS', self.k.state) == 1
end

function Episodes:rules ()
  local r = redis.call('HMGET', self.k.rules, 'high', 'low', 'sustainS', 'offline')
  return { high = tonumber(r[1]), low = tonumber(r[2]), sustainMs = (tonumber(r[3]) or 0) * 1000, offline = r[4] == '1' }
end

-- One stored reading (bpm and ts as the strings stored), in request order.
function Episodes:reading (rules, bpm, ts)
  local k = self.k
  local t = tonumber(ts)
  local last = tonumber(redis.call('HGET', k.state, 'lastTs'))
  if last and t < last then return end
  redis.call('HSET', k.state, 'lastTs', ts)
  local b = tonumber(bpm)
  local offline = redis.call('HGET', k.state, 'open:offline')
  if offline then self:close('offline', offline, ts) end
  for _, kind in ipairs({ 'high', 'low' }) do
    local limit = rules[kind]
    local open = redis.call('HGET', k.state, 'open:' .. kind)
    local pendingField = 'pending:' .. kind
    if open then
      redis.call('HDEL', k.state, pendingField)
      local back = limit == nil or (kind == 'high' and b <= limit - ${HYSTERESIS_BPM}) or (kind == 'low' and b >= limit + ${HYSTERESIS_BPM})
      if back then self:close(kind, open, ts) end
    elseif limit == nil or (kind == 'high' and b <= limit) or (kind == 'low' and b >= limit) then
      redis.call('HDEL', k.state, pendingField)
    else
      local since = tonumber(redis.call('HGET', k.state, pendingField)) or t
      if t - since >= rules.sustainMs then
        redis.call('HDEL', k.state, pendingField)
        self:open(kind, bpm, ts, ts)
      else
        redis.call('HSET', k.state, pendingField, string.format('%d', since))
      end
    end
  end
end
`
