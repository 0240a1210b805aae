import { Cluster, type Redis } from 'ioredis'
import { isHistoryId } from './reading.js'
import { userIdOfChannel, userKeys } from './redis-keys.js'
import type { FeedListener, LiveReading, ReadingFeed } from './store.js'

/** When a second fill follows the one made as soon as the shard subscribers are back. */
const SHARD_REFILL_MS = 1000

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
 * redis-scripts.ts) or a revocation. Anything else came from another publisher and is dropped.
 */
type Message = { readings: LiveReading[] } | { revoked: string }

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
  const revoked = (parsed as { revoked?: unknown } | null)?.revoked
  return typeof revoked === 'string' ? { revoked } : null
}

/**
 * One Redis subscription per watched user on this instance. When the subscription connection
 * comes back (standalone: its 'ready'; cluster: the shard subscribers' 'subscribersReady'), every
 * watched user is subscribed again and the hub is told, which fills what was missed from history.
 */
export class RedisFeed implements ReadingFeed {
  private listener: FeedListener | null = null
  /** The channels of each watched user: its live channel, and its keyspace channel with legacy events on. */
  private readonly channels = new Map<string, string[]>()
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
  private readonly onShardsReadyEvent = (): void => { void this.onShardsReady() }

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
      this.sub.on('subscribersReady', this.onShardsReadyEvent)
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

  /** Runs inside ioredis's event: nothing a publisher sends may make it throw. */
  private onMessage (channel: string, message: string): void {
    if (this.listener === null) return
    if (this.keyspacePrefix !== null && channel.startsWith(this.keyspacePrefix)) {
      if (message === 'set') void this.onLegacySet(channel.slice(this.keyspacePrefix.length))
      return
    }
    const userId = userIdOfChannel(this.prefix, channel)
    if (userId === null) return
    const parsed = parseMessage(message)
    if (parsed === null) {
      this.log.warn({ channel }, 'dropped a malformed message on a live channel')
    } else if ('readings' in parsed) {
      for (const r of parsed.readings) this.listener.reading(userId, r)
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
    if (this.sharded) {
      this.sub.off('smessage', this.onMessageEvent)
      this.sub.off('subscribersReady', this.onShardsReadyEvent)
    } else {
      this.sub.disconnect()
    }
  }
}
