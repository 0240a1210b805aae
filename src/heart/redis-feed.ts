import { Cluster, type Redis } from 'ioredis'
import { parseAlert, type Alert } from './episodes.js'
import { isHistoryId } from './reading.js'
import { userIdOfChannel, userKeys } from './redis-keys.js'
import type { FeedListener, LiveReading, ReadingFeed } from './store.js'

/** Backoff between attempts to subscribe a user again on a cluster: doubling from the first to the last. */
const RESUBSCRIBE_FIRST_MS = 100
const RESUBSCRIBE_MAX_MS = 2000

/** The logger methods the feed uses (Fastify's logger has them). */
export interface FeedLog {
  debug (obj: object, msg: string): void
  info (msg: string): void
  warn (obj: object, msg: string): void
  warn (msg: string): void
  error (obj: object, msg: string): void
}

export interface RedisFeedOptions {
  /**
   * The store's command client. Standalone and Sentinel: the feed duplicates it into a
   * connection of its own, which it closes. A Cluster client is used itself (sharded pub/sub,
   * one subscriber connection per shard inside ioredis), and the feed does not close it.
   */
  redis: Redis | Cluster
  prefix: string
  /**
   * Reads a value a legacy writer SET, or null when the SET was the service's own; given when
   * LEGACY_KEYSPACE_EVENTS is on. Keyspace events are per node: a cluster ignores it.
   */
  legacyRead: ((userId: string) => Promise<LiveReading | null>) | null
  /** Told of a (un)subscribe that failed: the next reconnect repairs it, but it should be seen (metrics). */
  onError: (err: unknown) => void
  log: FeedLog
}

/*
 * What a live channel carries: a JSON array of readings (published by the INGEST script,
 * with `{"alert":…}` for each alert episode it opens or closes),
 * redis-scripts.ts) or a revocation. Anything else came from another publisher and is dropped.
 */
type Message = { readings: LiveReading[] } | { revoked: string } | { alert: Alert }

export function revocationMessage (viewerId: string): string {
  return JSON.stringify({ revoked: viewerId })
}

function isReading (value: unknown): value is LiveReading {
  if (typeof value !== 'object' || value === null) return false
  const r = value as Record<string, unknown>
  return isHistoryId(r.id) && Number.isFinite(r.bpm) && Number.isFinite(r.ts)
}

function parseMessage (message: string): Message | null {
  let parsed: unknown
  try {
    parsed = JSON.parse(message)
  } catch {
    return null
  }
  if (Array.isArray(parsed)) return parsed.every(isReading) ? { readings: parsed } : null
  const { revoked, alert } = (parsed ?? {}) as { revoked?: unknown, alert?: unknown }
  if (typeof revoked === 'string') return { revoked }
  const episode = alert === undefined ? null : parseAlert(alert)
  return episode === null ? null : { alert: episode }
}

/** A watched user: its live channel, and its keyspace channel with legacy events on. */
interface Watched {
  channels: string[]
  /** Failed attempts to subscribe it again since it last succeeded (the cluster's backoff). */
  failures: number
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms).unref())
}

/**
 * One Redis subscription per watched user on this instance.
 *
 * After a subscription was lost, a user's messages reach the hub only once Redis has confirmed
 * its new subscription, and the hub is then told to fill that user from history: a message
 * passed on before that could move the hub past readings published into the gap, which the fill
 * would then skip. What is dropped meanwhile is in history, and the fill reads it.
 *
 * Standalone and Sentinel: the feed's own connection; on its 'ready' every watched user is
 * subscribed again with one command. Cluster: ioredis keeps one subscriber connection per shard,
 * replaces a lost one and resubscribes it itself without checking the answer, so a round starts
 * on every loss ('-node') and replacement ('subscribersReady'): each watched user is subscribed
 * again and the answer awaited, retrying with backoff (and a slots refresh, which makes ioredis
 * replace a subscriber it has not noticed is gone) until it succeeds or a later round takes over.
 */
export class RedisFeed implements ReadingFeed {
  private listener: FeedListener | null = null
  private readonly watched = new Map<string, Watched>()
  /** Watched users whose subscription Redis confirmed since it was last lost: only their live messages reach the hub. */
  private readonly live = new Set<string>()
  /** Counts losses of the subscription connection(s): an attempt begun in an earlier round gives up. */
  private round = 0
  private closed = false
  /** The store's command client, for CONFIG. */
  private readonly redis: Redis | Cluster
  private readonly sub: Redis | Cluster
  private readonly sharded: boolean
  private readonly prefix: string
  private readonly legacyRead: ((userId: string) => Promise<LiveReading | null>) | null
  private readonly keyspacePrefix: string | null
  private readonly onError: (err: unknown) => void
  private readonly log: FeedLog
  private readonly onMessageEvent = (channel: string, message: string): void => this.onMessage(channel, message)
  private readonly onShardsChangedEvent = (): void => this.onShardsChanged()

  constructor (opts: RedisFeedOptions) {
    this.redis = opts.redis
    this.prefix = opts.prefix
    this.onError = opts.onError
    this.log = opts.log
    this.sharded = opts.redis instanceof Cluster
    if (opts.legacyRead !== null && this.sharded) opts.log.warn('LEGACY_KEYSPACE_EVENTS is not supported on Redis Cluster (keyspace events are per node)')
    this.legacyRead = this.sharded ? null : opts.legacyRead
    if (this.sharded) {
      this.sub = opts.redis
      this.sub.on('smessage', this.onMessageEvent)
      this.sub.on('-node', this.onShardsChangedEvent)
      this.sub.on('subscribersReady', this.onShardsChangedEvent)
    } else {
      // autoResubscribe off: the feed resubscribes what is watched now, not what was watched before the drop.
      this.sub = (opts.redis as Redis).duplicate({ connectionName: 'heart-gateway-feed', commandTimeout: undefined, autoResubscribe: false })
      this.sub.on('error', (err: Error) => opts.log.debug({ err }, 'redis feed connection error'))
      this.sub.on('message', this.onMessageEvent)
      this.sub.on('ready', () => { void this.onReady() })
    }
    this.keyspacePrefix = this.legacyRead === null ? null : `__keyspace@${(this.sub as Redis).options.db ?? 0}__:${this.prefix}`
  }

  /** Resolves once the feed's own connection is ready and, with legacy events, once Redis was asked to publish them. */
  async start (): Promise<void> {
    const sub = this.sub
    if (!this.sharded && sub.status !== 'ready') await new Promise((resolve) => sub.once('ready', resolve))
    if (this.legacyRead === null) return
    try {
      await this.enableKeyspaceEvents()
      this.log.info('LEGACY_KEYSPACE_EVENTS: values SET directly on the legacy keys are pushed to subscribers')
    } catch (err) {
      this.log.error({ err }, 'LEGACY_KEYSPACE_EVENTS: could not enable keyspace events; set notify-keyspace-events to include K$ on the Redis server')
    }
  }

  /**
   * Asks Redis to publish keyspace events for string commands (`K$`), keeping the flags already set.
   * Managed Redis services may forbid CONFIG: then the operator sets notify-keyspace-events themselves.
   */
  private async enableKeyspaceEvents (): Promise<void> {
    const [, flags = ''] = await this.redis.config('GET', 'notify-keyspace-events') as [string, string]
    const missing = ['K', '$'].filter((f) => !flags.includes(f) && !(f === '$' && flags.includes('A'))).join('')
    if (missing !== '') await this.redis.config('SET', 'notify-keyspace-events', flags + missing)
  }

  setListener (listener: FeedListener): void {
    this.listener = listener
  }

  private async subscribe (channels: string[]): Promise<void> {
    if (this.sharded) await (this.sub as Cluster).ssubscribe(...channels)
    else await this.sub.subscribe(...channels)
  }

  /**
   * Resolves once the subscription is confirmed, or once it failed: then it is only remembered
   * and made later (standalone: on 'ready'; cluster: retried), and the hub is told when it is.
   * The hub reads the user's snapshot after this, so nothing before it needs filling.
   */
  async watch (userId: string): Promise<void> {
    const channels = [userKeys(this.prefix, userId).channel]
    if (this.keyspacePrefix !== null) channels.push(this.keyspacePrefix + userId)
    const w: Watched = { channels, failures: 0 }
    this.watched.set(userId, w)
    const round = this.round
    if (!this.sharded && this.sub.status !== 'ready') return
    try {
      await this.subscribe(channels)
    } catch (err) {
      this.onError(err)
      if (this.sharded) void this.resubscribe(userId, w, round, true)
      return
    }
    if (this.current(userId, w, round)) this.live.add(userId)
  }

  async unwatch (userId: string): Promise<void> {
    const w = this.watched.get(userId)
    if (w === undefined) return
    this.watched.delete(userId)
    this.live.delete(userId)
    if (this.sub.status !== 'ready') return
    if (this.sharded) await (this.sub as Cluster).sunsubscribe(...w.channels).catch(this.onError)
    else await this.sub.unsubscribe(...w.channels).catch(this.onError)
  }

  /** Whether `w` is still what is watched for `userId` and no loss happened since `round` began. */
  private current (userId: string, w: Watched, round: number): boolean {
    return !this.closed && round === this.round && this.watched.get(userId) === w
  }

  private async onReady (): Promise<void> {
    const round = ++this.round
    this.live.clear()
    const users = [...this.watched]
    if (users.length === 0) return
    try {
      await this.subscribe(users.flatMap(([, w]) => w.channels))
    } catch {
      return // the connection dropped again; the next 'ready' retries
    }
    for (const [userId, w] of users) if (this.current(userId, w, round)) this.live.add(userId)
    // Whatever was published before these subscriptions existed is in history: let the hub fill it.
    if (round === this.round) this.listener?.resumed()
  }

  /** A shard subscriber was lost or replaced: a new round subscribes every watched user again. */
  private onShardsChanged (): void {
    const round = ++this.round
    this.live.clear()
    for (const [userId, w] of this.watched) void this.resubscribe(userId, w, round, false)
  }

  /** Subscribes one user again on a cluster until Redis confirms it, then lets the hub fill it. */
  private async resubscribe (userId: string, w: Watched, round: number, failed: boolean): Promise<void> {
    for (;;) {
      if (failed) {
        await sleep(Math.min(RESUBSCRIBE_FIRST_MS * 2 ** w.failures, RESUBSCRIBE_MAX_MS))
        w.failures++
        if (!this.current(userId, w, round)) return
        // A cluster that is not ready reconnects by itself, and refreshes its slots as it does.
        const cluster = this.sub as Cluster
        if (cluster.status === 'ready') await new Promise<void>((resolve) => cluster.refreshSlotsCache(() => resolve()))
      }
      if (!this.current(userId, w, round)) return
      try {
        await this.subscribe(w.channels)
      } catch (err) {
        this.onError(err)
        failed = true
        continue
      }
      if (!this.current(userId, w, round)) return
      w.failures = 0
      this.live.add(userId)
      this.listener?.resumed([userId])
      return
    }
  }

  /** Runs inside ioredis's event: nothing a publisher sends may make it throw. */
  private onMessage (channel: string, message: string): void {
    if (this.listener === null) return
    if (this.keyspacePrefix !== null && channel.startsWith(this.keyspacePrefix)) {
      if (message === 'set') void this.onLegacySet(channel.slice(this.keyspacePrefix.length))
      return
    }
    const userId = userIdOfChannel(this.prefix, channel)
    // Not confirmed yet: the fill that follows the confirmation reads it from history.
    if (userId === null || !this.live.has(userId)) return
    const parsed = parseMessage(message)
    if (parsed === null) {
      this.log.warn({ channel }, 'dropped a malformed message on a live channel')
    } else if ('readings' in parsed) {
      for (const r of parsed.readings) this.listener.reading(userId, r)
    } else if ('alert' in parsed) {
      this.listener.alert(userId, parsed.alert)
    } else {
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

  /** Closes the feed's own connection; on a cluster it only lets go of the shared client. */
  async close (): Promise<void> {
    this.closed = true
    if (this.sharded) {
      this.sub.off('smessage', this.onMessageEvent)
      this.sub.off('-node', this.onShardsChangedEvent)
      this.sub.off('subscribersReady', this.onShardsChangedEvent)
    } else {
      this.sub.disconnect()
    }
  }
}
