import { Cluster, type Redis } from 'ioredis'
import { TimeoutError, withTimeout } from '../timeout.js'
import { ruleFields, type AlertRules } from './alert-rules.js'
import { MAX_HISTORY_ID, compareIds, type Current, type NewReading, type StoredReading } from './reading.js'
import { RedisFeed, revocationMessage, type FeedLog } from './redis-feed.js'
import { legacyKey, userKeys } from './redis-keys.js'
import { ADD_DEVICE, GRANT, REVOKE, SWEPT, HISTORY_SINCE, INGEST, OPEN_OFFLINE, REMOVE_DEVICE, SNAPSHOT, VERIFY_DEVICE } from './redis-scripts.js'
import { EPISODES_MAX, parseAlerts, type Alert } from './episodes.js'
import {
  NotConfirmedError, StoreUnavailableError, byCreation,
  type AlertQuery, type AppendResult, type DeviceInfo, type DeviceRecord, type GrantPair, type HeartStore, type HistoryPage, type HistoryQuery, type LiveReading, type Snapshot
} from './store.js'

type StreamEntry = [id: string, fields: string[]]

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

/** The rules hash as setAlertRules writes it; null when there is none. */
function parseRules (hash: Record<string, string>): AlertRules | null {
  if (hash.sustainS === undefined) return null
  const rules: AlertRules = { sustainS: Number(hash.sustainS), offline: hash.offline === '1' }
  if (hash.high !== undefined) rules.high = Number(hash.high)
  if (hash.low !== undefined) rules.low = Number(hash.low)
  return rules
}

export interface RedisStoreOptions {
  /**
   * Commands; the store does not own it. A Cluster client for Redis Cluster: sharded pub/sub
   * (SPUBLISH), and no multi-key transactions across users.
   */
  redis: Redis | Cluster
  prefix: string
  historyMax: number
  /** Push values that writers only SET on the legacy key (LEGACY_KEYSPACE_EVENTS). */
  legacyKeyspaceEvents?: boolean
  /** Told of every failed command (metrics). */
  onError?: (err: unknown) => void
  /** The feed's connection errors and its notices. */
  log?: FeedLog
  /**
   * Replicas that must hold an ingest before it is acknowledged (REDIS_WAIT_REPLICAS; 0: none).
   * One server or Sentinel only.
   */
  waitReplicas?: number
}

const quiet: FeedLog = { debug () {}, info () {}, warn () {}, error () {} }

/**
 * How long a caller waits for Redis before it is told the store is unavailable (ioredis's own
 * command timeout, plugins/redis.ts, is longer: it bounds the legacy hot path, which has no timer).
 */
const ANSWER_MS = 1000
/** While Redis is not answering, how soon a failed PING is tried again. */
const PROBE_MS = 250
/** The WAIT timeout: two in a row (see ReplicaConfirm) still fit in ANSWER_MS. */
const CONFIRM_MS = 400
/**
 * How long an ingest's user waits to go on the offline sweep: one ZADD then carries every user
 * ingested meanwhile, instead of a round trip per ingest. Far below OFFLINE_AFTER_MS (1 s at least),
 * and this instance's own sweep sends the waiting ones first.
 */
const OFFLINE_DUE_FLUSH_MS = 100
/** Users per ZADD of a flush. */
const OFFLINE_DUE_CHUNK = 1000

/**
 * Ingest with REDIS_WAIT_REPLICAS: the writes go over a connection of their own, because WAIT
 * counts the replicas holding that connection's writes and blocks it while it waits. One WAIT
 * at a time: every write made while one blocks shares the next, so a lagging replica costs a
 * request at most two WAIT timeouts, however many arrive.
 */
class ReplicaConfirm {
  private next: Promise<number> | null = null
  private last: Promise<unknown> = Promise.resolve()

  constructor (readonly conn: Redis, private readonly required: number) {}

  /** Resolves once `required` replicas hold every write this connection has made so far. */
  async confirmed (): Promise<void> {
    if (this.next === null) {
      const wait = this.last.then(async () => {
        this.next = null
        return await this.conn.wait(this.required, CONFIRM_MS)
      })
      this.next = wait
      this.last = wait.catch(() => {})
    }
    const replicas = await this.next
    if (replicas < this.required) throw new NotConfirmedError(replicas, this.required)
  }
}

/** Why a command was not sent: Redis stopped answering and has not answered a PING since. */
class NotAnsweringError extends Error {
  constructor () {
    super('redis is not answering: command not sent')
    this.name = 'NotAnsweringError'
  }
}

/** The Redis store: commands here, pub/sub in its feed (redis-feed.ts), scripts in redis-scripts.ts. */
export class RedisStore implements HeartStore {
  readonly kind = 'redis'
  readonly feed: RedisFeed
  private readonly redis: Redis | Cluster
  private readonly cluster: boolean
  private readonly prefix: string
  private readonly historyMax: number
  private readonly onError: (err: unknown) => void
  private readonly log: FeedLog
  /**
   * Set when a command waited ANSWER_MS (a paused or overloaded Redis keeps the connection open
   * but answers nothing); until a PING answers again, commands fail at once instead of queueing
   * behind the stuck ones. One server only: on a cluster one stuck shard must not fail the others.
   */
  private stalled = false
  private closed = false
  private readonly confirm: ReplicaConfirm | null

  /** Opens the store and its feed; resolves once the feed can subscribe. */
  static async open (opts: RedisStoreOptions): Promise<RedisStore> {
    const store = new RedisStore(opts)
    const conn = store.confirm?.conn
    if (conn !== undefined && conn.status !== 'ready') await new Promise((resolve) => conn.once('ready', resolve))
    await store.feed.start()
    return store
  }

  private alertOpened: (alert: Alert) => void = () => {}
  /** Users ingested with the offline rule on since the last flush, with their newest ts. */
  private readonly due = new Map<string, number>()
  private dueFlush: NodeJS.Timeout | null = null
  /** Users with the offline rule on, scored by their newest reading's ts (README, "Redis layout"). */
  private get offlineDueKey (): string {
    return `${this.prefix}alert-offline-due`
  }

  private get publish (): 'SPUBLISH' | 'PUBLISH' {
    return this.cluster ? 'SPUBLISH' : 'PUBLISH'
  }

  private constructor (opts: RedisStoreOptions) {
    this.onError = opts.onError ?? (() => {})
    this.redis = opts.redis
    this.cluster = opts.redis instanceof Cluster
    this.prefix = opts.prefix
    this.historyMax = opts.historyMax
    this.log = opts.log ?? quiet
    const waitReplicas = opts.waitReplicas ?? 0
    if (waitReplicas > 0 && this.cluster) throw new Error('waiting for replicas is not supported on Redis Cluster')
    this.confirm = null
    if (waitReplicas > 0) {
      const conn = (opts.redis as Redis).duplicate({ connectionName: 'heart-gateway-ingest' })
      conn.on('error', (err: Error) => this.log.debug({ err }, 'redis ingest connection error'))
      this.confirm = new ReplicaConfirm(conn, waitReplicas)
    }
    this.feed = new RedisFeed({
      redis: opts.redis,
      prefix: opts.prefix,
      legacyRead: opts.legacyKeyspaceEvents === true ? async (userId) => await this.legacyValue(userId) : null,
      onError: this.onError,
      log: this.log
    })
  }

  private async guarded<T> (op: () => Promise<T>): Promise<T> {
    if (this.stalled) throw this.unavailable(new NotAnsweringError())
    try {
      return await withTimeout(op(), ANSWER_MS)
    } catch (err) {
      throw this.unavailable(err)
    }
  }

  private unavailable (err: unknown): StoreUnavailableError {
    this.onError(err)
    // ioredis's own command timeout (the legacy hot path) has no error class of its own.
    if (err instanceof TimeoutError || (err instanceof Error && err.message === 'Command timed out')) this.notAnswering()
    return new StoreUnavailableError(err)
  }

  private notAnswering (): void {
    if (this.stalled || this.cluster || this.closed) return
    this.stalled = true
    this.log.warn(`redis did not answer within ${ANSWER_MS} ms: commands fail at once until it answers a PING`)
    void this.probe()
  }

  /** PINGs until Redis answers (each PING waits up to ioredis's command timeout). */
  private async probe (): Promise<void> {
    while (!this.closed) {
      try {
        await this.redis.ping()
        this.stalled = false
        this.log.info('redis answers again')
        return
      } catch {
        await new Promise((resolve) => setTimeout(resolve, PROBE_MS).unref())
      }
    }
  }

  /** A rejection handler for the hot path, made once. */
  private readonly failed = (err: unknown): never => {
    throw this.unavailable(err)
  }

  /** The original protocol's read, on the hot path: one GET, one promise. */
  currentBpm (userId: string): Promise<number | null> {
    if (this.stalled) return Promise.reject(this.unavailable(new NotAnsweringError()))
    return this.redis.get(legacyKey(this.prefix, userId)).then(parseBpm, this.failed)
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
    const [value, meta, lastId, open] = await this.guarded(() => SNAPSHOT.run(this.redis, [k.current, k.meta, k.history, k.alertState, k.alerts], [])) as [string | null, string | null, string | null, string[]]
    return { current: parseCurrent(value, meta), lastId: lastId ?? null, alerts: parseAlerts(open).sort((a, b) => compareIds(a.alertId, b.alertId)) }
  }

  async append (userId: string, readings: NewReading[]): Promise<AppendResult> {
    const k = userKeys(this.prefix, userId)
    const args: Array<string | number> = [this.historyMax, this.publish, k.channel, userId, EPISODES_MAX]
    for (const r of readings) args.push(r.bpm, r.ts, r.serverTs === true ? 0 : 1)
    const keys = [k.current, k.meta, k.history, k.idsByTs, k.alertRules, k.alertState, k.alertLog, k.alerts]
    const confirm = this.confirm
    const [ids, duplicates, transitions, newest] = await this.guarded(async () => {
      if (confirm === null) return await INGEST.run(this.redis, keys, args)
      const result = await INGEST.run(confirm.conn, keys, args)
      await confirm.confirmed()
      return result
    }) as [string[], number, string[], string | null]
    const alerts = parseAlerts(transitions)
    for (const a of alerts) if (a.state === 'open') this.alertOpened(a)
    if (typeof newest === 'string') this.dueAt(userId, Number(newest))
    return { ids, duplicates, alerts }
  }

  private dueAt (userId: string, newest: number): void {
    const seen = this.due.get(userId)
    if (seen === undefined || newest > seen) this.due.set(userId, newest)
    if (this.dueFlush === null) {
      this.dueFlush = setTimeout(() => { void this.flushDue() }, OFFLINE_DUE_FLUSH_MS)
      this.dueFlush.unref()
    }
  }

  /** Puts the users ingested since the last flush on the offline sweep. */
  private async flushDue (): Promise<void> {
    if (this.dueFlush !== null) clearTimeout(this.dueFlush)
    this.dueFlush = null
    if (this.due.size === 0) return
    const entries = [...this.due]
    this.due.clear()
    for (let i = 0; i < entries.length; i += OFFLINE_DUE_CHUNK) {
      const args = entries.slice(i, i + OFFLINE_DUE_CHUNK).flatMap(([userId, ts]) => [ts, userId])
      // Only ever forward (GT): a late upload does not make an online user look due.
      await this.guarded(() => this.redis.zadd(this.offlineDueKey, 'GT', ...args)).catch((err: unknown) => {
        this.log.warn({ err, users: args.length / 2 }, 'could not put users on the offline sweep')
      })
    }
  }

  /**
   * Opens the offline episode of users nobody watches (watched ones are handled by the hubs'
   * timers): each instance sweeps, the episode opens once (OPEN_OFFLINE), and the instance that
   * opens it sends its messages.
   */
  async sweepOffline (offlineAfterMs: number): Promise<void> {
    await this.flushDue()
    const due = await this.guarded(() => this.redis.zrangebyscore(this.offlineDueKey, '-inf', Date.now() - offlineAfterMs, 'WITHSCORES', 'LIMIT', 0, 100))
    for (let i = 0; i < due.length; i += 2) {
      const [userId, score] = [due[i], due[i + 1]]
      await this.openOffline(userId, Number(score), offlineAfterMs)
      await this.guarded(() => SWEPT.run(this.redis, [this.offlineDueKey], [userId, score]))
    }
  }

  async openOffline (userId: string, lastTs: number, offlineAfterMs: number): Promise<Alert | null> {
    const k = userKeys(this.prefix, userId)
    const text = await this.guarded(() => OPEN_OFFLINE.run(this.redis, [k.meta, k.alertRules, k.alertState, k.alertLog, k.alerts],
      [lastTs, lastTs + offlineAfterMs, userId, EPISODES_MAX, this.publish, k.channel])) as string | null
    const [alert] = parseAlerts(text === null ? [] : [text])
    if (alert === undefined) return null
    this.alertOpened(alert)
    return alert
  }

  async alerts (userId: string, { since, limit }: AlertQuery): Promise<Alert[]> {
    const k = userKeys(this.prefix, userId)
    const entries = await this.guarded(() => since === undefined
      ? this.redis.xrevrange(k.alertLog, '+', '-', 'COUNT', limit).then((e) => e.reverse())
      : since === MAX_HISTORY_ID ? Promise.resolve([]) : this.redis.xrange(k.alertLog, `(${since}`, '+', 'COUNT', limit))
    if (entries.length === 0) return []
    const texts = await this.guarded(() => this.redis.hmget(k.alerts, ...entries.map(([id]) => id)))
    return parseAlerts(texts.filter((t): t is string => t !== null))
  }

  onAlertOpened (sink: (alert: Alert) => void): void {
    this.alertOpened = sink
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

  /**
   * The owner's set decides, in one step (REVOKE); the viewer's `watching` list (another slot on
   * a cluster) follows. If that second write fails the grant is still fully withdrawn: the list
   * is only what GET /shares/watching reads, and that filters by the owners' sets.
   */
  async revoke (ownerId: string, viewerId: string): Promise<boolean> {
    const o = userKeys(this.prefix, ownerId)
    const removed = await this.guarded(() => REVOKE.run(this.redis, [o.viewers], [viewerId, this.cluster ? 'SPUBLISH' : 'PUBLISH', o.channel, revocationMessage(viewerId)]))
    try {
      await this.guarded(() => this.redis.srem(userKeys(this.prefix, viewerId).watching, ownerId))
    } catch (err) {
      this.log.warn({ err, ownerId, viewerId }, 'grant withdrawn; the viewer\'s watching list keeps a stale entry (filtered on read)')
    }
    return removed === 1
  }

  async areGranted (pairs: readonly GrantPair[]): Promise<boolean[]> {
    // One SMISMEMBER per owner (its set lives in its own slot), all issued in one tick: auto-pipelining
    // sends them together, to each cluster node the ones of its slots.
    const byOwner = new Map<string, string[]>()
    for (const { ownerId, viewerId } of pairs) {
      const viewers = byOwner.get(ownerId)
      if (viewers === undefined) byOwner.set(ownerId, [viewerId])
      else viewers.push(viewerId)
    }
    const owners = [...byOwner]
    const answers = await this.guarded(() => Promise.all(owners.map(([ownerId, viewers]) => this.redis.smismember(userKeys(this.prefix, ownerId).viewers, ...viewers))))
    const granted = new Map<string, Map<string, boolean>>()
    owners.forEach(([ownerId, viewers], i) => granted.set(ownerId, new Map(viewers.map((v, j) => [v, answers[i][j] === 1]))))
    return pairs.map(({ ownerId, viewerId }) => granted.get(ownerId)?.get(viewerId) === true)
  }

  async viewersOf (ownerId: string): Promise<string[]> {
    return (await this.guarded(() => this.redis.smembers(userKeys(this.prefix, ownerId).viewers))).sort()
  }

  async watchedBy (viewerId: string): Promise<string[]> {
    return (await this.guarded(() => this.redis.smembers(userKeys(this.prefix, viewerId).watching))).sort()
  }

  async addDevice (ownerId: string, device: DeviceRecord, maxDevices: number): Promise<boolean> {
    const { deviceId, name, createdAt, keyHash } = device
    const record = JSON.stringify({ name, createdAt, keyHash })
    return await this.guarded(() => ADD_DEVICE.run(this.redis, [userKeys(this.prefix, ownerId).devices], [deviceId, record, maxDevices])) === 1
  }

  async devices (ownerId: string): Promise<DeviceInfo[]> {
    const k = userKeys(this.prefix, ownerId)
    const [records, seen] = await this.guarded(async () => await Promise.all([this.redis.hgetall(k.devices), this.redis.hgetall(k.devicesSeen)]))
    return Object.entries(records).map(([deviceId, json]) => {
      const { name, createdAt } = JSON.parse(json) as { name: string, createdAt: number }
      const lastSeen = seen[deviceId]
      return { deviceId, name, createdAt, lastSeenAt: lastSeen === undefined ? null : Number(lastSeen) }
    }).sort(byCreation)
  }

  async removeDevice (ownerId: string, deviceId: string): Promise<boolean> {
    const k = userKeys(this.prefix, ownerId)
    return await this.guarded(() => REMOVE_DEVICE.run(this.redis, [k.devices, k.devicesSeen], [deviceId])) === 1
  }

  async verifyDevice (ownerId: string, deviceId: string, keyHash: string, seenAt: number): Promise<boolean> {
    const k = userKeys(this.prefix, ownerId)
    return await this.guarded(() => VERIFY_DEVICE.run(this.redis, [k.devices, k.devicesSeen], [deviceId, keyHash, seenAt])) === 1
  }

  async setAlertRules (userId: string, rules: AlertRules): Promise<AlertRules> {
    const key = userKeys(this.prefix, userId).alertRules
    const fields: Record<string, string | number> = { sustainS: rules.sustainS, offline: rules.offline ? 1 : 0 }
    if (rules.high !== undefined) fields.high = rules.high
    if (rules.low !== undefined) fields.low = rules.low
    // One key, so one transaction also on a cluster: readers never see a mix of old and new rules.
    await this.guarded(() => this.redis.multi().del(key).hset(key, fields).exec())
    return ruleFields(rules)
  }

  async alertRules (userId: string): Promise<AlertRules | null> {
    return parseRules(await this.guarded(() => this.redis.hgetall(userKeys(this.prefix, userId).alertRules)))
  }

  async deleteAlertRules (userId: string): Promise<void> {
    await this.guarded(() => this.redis.del(userKeys(this.prefix, userId).alertRules))
  }

  async close (): Promise<void> {
    await this.flushDue()
    this.closed = true
    this.confirm?.conn.disconnect()
    await this.feed.close()
  }
}
