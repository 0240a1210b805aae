import { createHash } from 'node:crypto'
import type { Cluster, Redis } from 'ioredis'
import { MAX_HISTORY_ID, type Current, type NewReading, type StoredReading } from './reading.js'
import { userIdOfChannel, userKeys } from './redis-keys.js'
import {
  StoreUnavailableError,
  type FeedListener, type HeartStore, type HistoryPage, type HistoryQuery, type LiveReading, type ReadingFeed, type Snapshot
} from './store.js'

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
 * KEYS: current, meta, history. ARGV: history max, publish command, channel, then bpm, ts pairs.
 */
const INGEST = new LuaScript(`#!lua
local function kind (key) return redis.call('TYPE', key)['ok'] end
local k1, k2, k3 = kind(KEYS[1]), kind(KEYS[2]), kind(KEYS[3])
if (k1 ~= 'none' and k1 ~= 'string') or (k2 ~= 'none' and k2 ~= 'string') or (k3 ~= 'none' and k3 ~= 'stream') then
  return redis.error_reply('WRONGTYPE heart keys hold unexpected types; nothing written')
end
local meta = redis.call('GET', KEYS[2])
local newest = -1
if meta then newest = tonumber(string.match(meta, '^(%d+)')) or -1 end
local ids, msgs, newTs, newBpm = {}, {}, nil, nil
for i = 4, #ARGV, 2 do
  local bpm, ts = ARGV[i], ARGV[i + 1]
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'bpm', bpm, 'ts', ts)
  ids[#ids + 1] = id
  msgs[#msgs + 1] = '{"id":"' .. id .. '","bpm":' .. bpm .. ',"ts":' .. ts .. '}'
  local t = tonumber(ts)
  if t > newest then newest, newTs, newBpm = t, ts, bpm end
end
if newBpm then
  redis.call('SET', KEYS[1], newBpm)
  redis.call('SET', KEYS[2], newTs .. ':' .. newBpm)
end
redis.call(ARGV[2], ARGV[3], '[' .. table.concat(msgs, ',') .. ']')
return ids
`)

/*
 * Adds a viewer unless the owner already has the maximum: the check and the write in one step.
 * The viewer's own `watching` set is a second write (another slot on a cluster): reads go by the
 * owner's set, so a grant interrupted between the two still reads as granted. KEYS: viewers. ARGV: viewer, max.
 */
const GRANT = new LuaScript(`#!lua
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
`)

/* Current value and newest history id, read together. KEYS: current, meta, history. */
const SNAPSHOT = new LuaScript(`#!lua flags=no-writes
local v = redis.call('MGET', KEYS[1], KEYS[2])
local last = false
if redis.call('EXISTS', KEYS[3]) == 1 then
  local e = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if e[1] then last = e[1][1] end
end
return { v[1], v[2], last }
`)

/*
 * Readings after an id, and whether any after it may have been trimmed: the stream has lost
 * entries (entries-added > length) and `since` is older than the oldest entry kept. (Redis does
 * not record which ids trimming removed, so a client whose `since` was exactly the newest trimmed
 * entry is told `truncated` although it missed nothing.) KEYS: history. ARGV: since, count.
 */
const HISTORY_SINCE = new LuaScript(`#!lua flags=no-writes
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

type StreamEntry = [id: string, fields: string[]]

/** When a second fill follows the one made as soon as the shard subscribers are back. */
const SHARD_REFILL_MS = 1000

function parseEntry ([id, fields]: StreamEntry): StoredReading {
  let bpm = NaN
  let ts = NaN
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i] === 'bpm') bpm = Number(fields[i + 1])
    else if (fields[i] === 'ts') ts = Number(fields[i + 1])
  }
  return { id, bpm, ts }
}

/** A legacy key's value as a bpm; anything that is not a number reads as no value. */
function parseBpm (value: string | null): number | null {
  if (value === null || value === '') return null
  const bpm = Number(value)
  return Number.isFinite(bpm) ? bpm : null
}

/** Reads the legacy key and the service's `<ts>:<bpm>` beside it. A value some other writer set has no known time. */
function parseCurrent (value: string | null, meta: string | null): Current | null {
  const bpm = parseBpm(value)
  if (bpm === null) return null
  let ts: number | null = null
  if (meta !== null) {
    const sep = meta.indexOf(':')
    if (meta.slice(sep + 1) === value) ts = Number(meta.slice(0, sep))
  }
  return { bpm, ts }
}


export interface RedisStoreOptions {
  /** Commands; the store does not own it. A Cluster client for Redis Cluster. */
  redis: Redis | Cluster
  /**
   * Pub/sub. A standalone or Sentinel deployment gives a connection of its own, owned and closed
   * by the store; on a cluster it is the Cluster client itself (sharded pub/sub, one subscriber
   * connection per shard inside ioredis), which the store does not close.
   */
  subscriber: Redis | Cluster
  /** Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH), and no multi-key transactions across users. */
  cluster?: boolean
  prefix: string
  historyMax: number
  /** Push values that writers only SET on the legacy key (LEGACY_KEYSPACE_EVENTS). */
  legacyKeyspaceEvents?: boolean
  /** Told of every failed command (metrics). */
  onError?: (err: unknown) => void
}

/**
 * One Redis subscription per watched user on this instance. When the subscription connection
 * comes back (standalone: its 'ready'; cluster: the shard subscribers' 'subscribersReady'), every
 * watched user is subscribed again and the hub is told, which fills what was missed from history.
 */
class RedisFeed implements ReadingFeed {
  private listener: FeedListener | null = null
  /** The channels of each watched user: its live channel, and its keyspace channel with legacy events on. */
  private readonly channels = new Map<string, string[]>()
  private readonly keyspacePrefix: string | null

  constructor (
    private readonly sub: Redis | Cluster,
    private readonly sharded: boolean,
    private readonly prefix: string,
    /** Reads a value a legacy writer SET, when keyspace events are on (standalone only). */
    private readonly legacyRead: ((userId: string) => Promise<LiveReading | null>) | null,
    /** Told of a (un)subscribe that failed: the next reconnect repairs it, but it should be seen. */
    private readonly onError: (err: unknown) => void
  ) {
    this.keyspacePrefix = legacyRead === null ? null : `__keyspace@${(sub as Redis).options.db ?? 0}__:${prefix}`
    const onMessage = (channel: string, message: string): void => this.onMessage(channel, message)
    if (sharded) {
      sub.on('smessage', onMessage)
      sub.on('subscribersReady', () => { void this.onShardsReady() })
    } else {
      sub.on('message', onMessage)
      sub.on('ready', () => { void this.onReady() })
    }
  }

  setListener (listener: FeedListener): void {
    this.listener = listener
  }

  private async subscribe (channels: string[]): Promise<void> {
    if (this.sharded) await (this.sub as Cluster).ssubscribe(...channels)
    else await this.sub.subscribe(...channels)
  }

  async watch (userId: string): Promise<void> {
    const channels = [userKeys(this.prefix, userId).channel]
    if (this.keyspacePrefix !== null) channels.push(this.keyspacePrefix + userId)
    this.channels.set(userId, channels)
    // While disconnected the subscription is only remembered; onReady makes it and the hub fills the gap.
    if (this.sub.status === 'ready') await this.subscribe(channels).catch(this.onError)
  }

  async unwatch (userId: string): Promise<void> {
    const channels = this.channels.get(userId)
    if (channels === undefined) return
    this.channels.delete(userId)
    if (this.sub.status !== 'ready') return
    if (this.sharded) await (this.sub as Cluster).sunsubscribe(...channels).catch(this.onError)
    else await this.sub.unsubscribe(...channels).catch(this.onError)
  }

  private async onReady (): Promise<void> {
    if (this.channels.size === 0) return
    try {
      await this.subscribe([...this.channels.values()].flat())
    } catch {
      return // the connection dropped again; the next 'ready' retries
    }
    // Whatever was published before these subscriptions existed is in history: let the hub fill it.
    this.listener?.resumed()
  }

  /**
   * ioredis has replaced shard subscriber connections and resubscribes them itself, without
   * waiting for the answers (and our own SSUBSCRIBE may be refused while the cluster client
   * refreshes its slots). The hub is told in any case, and once more a moment later: a fill is
   * idempotent, and the second one covers readings published before the subscriptions were live.
   */
  private async onShardsReady (): Promise<void> {
    if (this.channels.size === 0) return
    await Promise.all([...this.channels.values()].map(async (c) => await this.subscribe(c).catch(this.onError)))
    this.listener?.resumed()
    setTimeout(() => this.listener?.resumed(), SHARD_REFILL_MS).unref()
  }

  private onMessage (channel: string, message: string): void {
    if (this.listener === null) return
    if (this.keyspacePrefix !== null && channel.startsWith(this.keyspacePrefix)) {
      if (message === 'set') void this.onLegacySet(channel.slice(this.keyspacePrefix.length))
      return
    }
    const userId = userIdOfChannel(this.prefix, channel)
    if (userId === null) return
    let parsed: LiveReading[] | { revoked?: unknown }
    try {
      parsed = JSON.parse(message)
    } catch {
      return
    }
    if (Array.isArray(parsed)) {
      for (const r of parsed) this.listener.reading(userId, r)
    } else if (typeof parsed?.revoked === 'string') {
      this.listener.revoked(userId, parsed.revoked)
    }
  }

  private async onLegacySet (userId: string): Promise<void> {
    try {
      const reading = await this.legacyRead?.(userId)
      if (reading != null) this.listener?.reading(userId, reading)
    } catch {
      // Redis went away between the event and the read; the value stays readable with get.
    }
  }
}

export class RedisStore implements HeartStore {
  readonly kind = 'redis'
  readonly feed: RedisFeed
  private readonly redis: Redis | Cluster
  private readonly subscriber: Redis | Cluster
  private readonly cluster: boolean
  private readonly prefix: string
  private readonly historyMax: number

  private readonly onError: (err: unknown) => void

  constructor (opts: RedisStoreOptions) {
    this.onError = opts.onError ?? (() => {})
    this.redis = opts.redis
    this.subscriber = opts.subscriber
    this.cluster = opts.cluster === true
    this.prefix = opts.prefix
    this.historyMax = opts.historyMax
    this.feed = new RedisFeed(opts.subscriber, this.cluster, opts.prefix, opts.legacyKeyspaceEvents === true && !this.cluster ? (userId) => this.legacyValue(userId) : null, this.onError)
  }

  private async guarded<T> (op: () => Promise<T>): Promise<T> {
    try {
      return await op()
    } catch (err) {
      throw this.unavailable(err)
    }
  }

  private unavailable (err: unknown): StoreUnavailableError {
    this.onError(err)
    return new StoreUnavailableError(err)
  }

  /** A rejection handler for the hot path, made once. */
  private readonly failed = (err: unknown): never => {
    throw this.unavailable(err)
  }

  /** The original protocol's read, on the hot path: one GET, one promise. */
  currentBpm (userId: string): Promise<number | null> {
    return this.redis.get(this.prefix + userId).then(parseBpm, this.failed)
  }

  async ping (): Promise<void> {
    await this.guarded(() => this.redis.ping())
  }

  async current (userId: string): Promise<Current | null> {
    const k = userKeys(this.prefix, userId)
    const [value, meta] = await this.guarded(() => this.redis.mget(k.current, k.meta))
    return parseCurrent(value, meta)
  }

  async snapshot (userId: string): Promise<Snapshot> {
    const k = userKeys(this.prefix, userId)
    const [value, meta, lastId] = await this.guarded(() => SNAPSHOT.run(this.redis, [k.current, k.meta, k.history], [])) as [string | null, string | null, string | null]
    return { current: parseCurrent(value, meta), lastId: lastId ?? null }
  }

  async append (userId: string, readings: NewReading[]): Promise<string[]> {
    const k = userKeys(this.prefix, userId)
    const args: Array<string | number> = [this.historyMax, this.cluster ? 'SPUBLISH' : 'PUBLISH', k.channel]
    for (const r of readings) args.push(r.bpm, r.ts)
    return await this.guarded(() => INGEST.run(this.redis, [k.current, k.meta, k.history], args)) as string[]
  }

  async history (userId: string, { since, limit }: HistoryQuery): Promise<HistoryPage> {
    const key = userKeys(this.prefix, userId).history
    if (since === undefined) {
      const entries = await this.guarded(() => this.redis.xrevrange(key, '+', '-', 'COUNT', limit)) as StreamEntry[]
      return { readings: entries.reverse().map(parseEntry), truncated: false }
    }
    // Redis refuses an exclusive range that starts at the largest id; nothing can follow it anyway.
    if (since === MAX_HISTORY_ID) return { readings: [], truncated: false }
    const [entries, truncated] = await this.guarded(() => HISTORY_SINCE.run(this.redis, [key], [since, limit])) as [StreamEntry[], number]
    return { readings: entries.map(parseEntry), truncated: truncated === 1 }
  }

  /**
   * Asks Redis to publish keyspace events for string commands (`K$`), keeping the flags already set.
   * Managed Redis services may forbid CONFIG: then the operator sets notify-keyspace-events themselves.
   */
  async enableKeyspaceEvents (): Promise<void> {
    const [, flags = ''] = await this.redis.config('GET', 'notify-keyspace-events') as [string, string]
    const missing = ['K', '$'].filter((f) => !flags.includes(f) && !(f === '$' && flags.includes('A'))).join('')
    if (missing !== '') await this.redis.config('SET', 'notify-keyspace-events', flags + missing)
  }

  /**
   * A legacy writer's value, or null when the SET was the service's own (ingest already
   * published it): the service's writes leave the same bpm beside their ts.
   */
  private async legacyValue (userId: string): Promise<LiveReading | null> {
    const k = userKeys(this.prefix, userId)
    const [value, meta] = await this.redis.mget(k.current, k.meta)
    const current = parseCurrent(value, meta)
    if (current === null || current.ts !== null) return null
    return { id: null, bpm: current.bpm, ts: Date.now() }
  }

  async grant (ownerId: string, viewerId: string, maxViewers: number): Promise<boolean> {
    const o = userKeys(this.prefix, ownerId)
    const v = userKeys(this.prefix, viewerId)
    return await this.guarded(async () => {
      if (await GRANT.run(this.redis, [o.viewers], [viewerId, maxViewers]) !== 1) return false
      await this.redis.sadd(v.watching, ownerId)
      return true
    })
  }

  async revoke (ownerId: string, viewerId: string): Promise<boolean> {
    const o = userKeys(this.prefix, ownerId)
    const v = userKeys(this.prefix, viewerId)
    const announce = JSON.stringify({ revoked: viewerId })
    if (this.cluster) {
      return await this.guarded(async () => {
        const removed = await this.redis.srem(o.viewers, viewerId)
        await this.redis.srem(v.watching, ownerId)
        await (this.redis as Cluster).spublish(o.channel, announce)
        return removed === 1
      })
    }
    const results = await this.guarded(() => this.redis.multi()
      .srem(o.viewers, viewerId)
      .srem(v.watching, ownerId)
      .publish(o.channel, announce)
      .exec())
    return results?.[0]?.[1] === 1
  }

  async isGranted (ownerId: string, viewerId: string): Promise<boolean> {
    return await this.guarded(() => this.redis.sismember(userKeys(this.prefix, ownerId).viewers, viewerId)) === 1
  }

  async viewersOf (ownerId: string): Promise<string[]> {
    return (await this.guarded(() => this.redis.smembers(userKeys(this.prefix, ownerId).viewers))).sort()
  }

  async watchedBy (viewerId: string): Promise<string[]> {
    return (await this.guarded(() => this.redis.smembers(userKeys(this.prefix, viewerId).watching))).sort()
  }

  async close (): Promise<void> {
    if (this.subscriber !== this.redis) this.subscriber.disconnect()
  }
}
