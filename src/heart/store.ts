import type { Alert } from './episodes.js'
import type { AlertRules } from './alert-rules.js'
import type { Current, NewReading, StoredReading } from './reading.js'

/** What a reading looks like when it reaches the live feed. `id` is null for values seen from writers that only `SET` the legacy key. */
export interface LiveReading {
  id: string | null
  bpm: number
  ts: number
}

export interface Snapshot {
  current: Current | null
  /** Newest history id of the user, or null when the history is empty. */
  lastId: string | null
  /** The user's open alert episodes, oldest first. */
  alerts: Alert[]
}

export interface HistoryPage {
  readings: StoredReading[]
  /** True when `since` was given and readings after it were trimmed from history (HISTORY_MAX). */
  truncated: boolean
}

/**
 * A device as the store keeps it: its key is never stored, only `keyHash`, the SHA-256 (hex) of the
 * key's secret (src/heart/devices.ts).
 */
export interface DeviceRecord {
  deviceId: string
  name: string
  createdAt: number
  keyHash: string
}

/** A device as its owner sees it (GET /devices): no key, no hash. */
export interface DeviceInfo {
  deviceId: string
  name: string
  createdAt: number
  /** When its key last wrote readings; null when never. */
  lastSeenAt: number | null
}

/** The order `devices` lists them in: oldest first, ties by id, the same on both stores. */
export function byCreation (a: DeviceInfo, b: DeviceInfo): number {
  return a.createdAt - b.createdAt || (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0)
}

export interface HistoryQuery {
  /** Exclusive lower bound; without it the newest `limit` readings are returned. */
  since?: string | undefined
  limit: number
}

export interface AppendResult {
  /** One history id per reading given, in order; a duplicate's is the id it was first stored under. */
  ids: string[]
  /** How many of the readings were duplicates (stored before, so stored nothing now). */
  duplicates: number
  /** Alert episodes the readings opened or closed, in order (also published to every instance). */
  alerts: Alert[]
}

export interface AlertQuery {
  /** Exclusive lower bound (an alertId); without it the newest `limit` episodes. */
  since?: string | undefined
  limit: number
}

/** One grant, as a store keeps it: the owner's set of viewers holds the viewer. */
export interface GrantPair {
  ownerId: string
  viewerId: string
}

/** Receives what the live feed delivers. */
export interface FeedListener {
  reading (userId: string, reading: LiveReading): void
  /**
   * The feed's subscription of these watched users (without `userIds`: of every one) is confirmed
   * again after it was lost: their readings and revocations in between may have been missed.
   */
  resumed (userIds?: Iterable<string>): void
  /** `ownerId` withdrew `viewerId`'s grant (on any instance). */
  revoked (ownerId: string, viewerId: string): void
  /** An alert episode opened or closed (on any instance). */
  alert (userId: string, alert: Alert): void
}

/**
 * The live side of a store: one subscription per watched user on this instance.
 * `watch`/`unwatch` are called by the hub only, which reference-counts local watchers.
 */
export interface ReadingFeed {
  setListener (listener: FeedListener): void
  watch (userId: string): Promise<void>
  unwatch (userId: string): Promise<void>
}

/**
 * The only way routes and the hub reach heart-rate data. Implemented by the Redis store
 * (shared by every instance) and the embedded store (one process, nothing survives a restart);
 * both pass the same contract tests (test/store-contract.ts).
 * Every method rejects with StoreUnavailableError when the backing store does not answer, within
 * about a second (the Redis store's ANSWER_MS; `currentBpm` within ioredis's command timeout), so
 * callers never queue behind a stuck Redis. For a write that means "outcome unknown": the command
 * may still run once Redis answers again.
 */
export interface HeartStore {
  readonly kind: 'redis' | 'memory'
  readonly feed: ReadingFeed
  ping (): Promise<void>
  current (userId: string): Promise<Current | null>
  /** The current bpm alone (the original protocol's answer): one key read on Redis. */
  currentBpm (userId: string): Promise<number | null>
  snapshot (userId: string): Promise<Snapshot>
  /**
   * Appends to history, moves the current value forward when a reading is not older, publishes:
   * all or nothing. A reading with its own `ts` that history already holds for the user (a resend)
   * is a duplicate: nothing is stored or published for it, and its id is the stored reading's.
   */
  append (userId: string, readings: NewReading[]): Promise<AppendResult>
  history (userId: string, query: HistoryQuery): Promise<HistoryPage>

  /** The user's alert episodes, open and closed, oldest first. */
  alerts (userId: string, query: AlertQuery): Promise<Alert[]>
  /**
   * The hub saw the user go offline (no reading since `lastTs` for `offlineAfterMs`): opens the
   * `offline` episode if the rule is on, none is open and no reading came since, once across
   * every instance that saw it. Returns it when this call opened it.
   */
  openOffline (userId: string, lastTs: number, offlineAfterMs: number): Promise<Alert | null>
  /** Opens the `offline` episode of users with the rule on whose newest reading is `offlineAfterMs` old, watched or not. */
  sweepOffline (offlineAfterMs: number): Promise<void>
  /** Told of every episode this instance's writes open (the instance that opens one sends its messages). */
  onAlertOpened (sink: (alert: Alert) => void): void

  /**
   * Lets `viewerId` read `ownerId`'s heart rate, unless the owner already has `maxViewers` others:
   * the check and the write are one step, so simultaneous grants cannot pass the cap. Granting
   * again is harmless. False when the cap refused it.
   */
  grant (ownerId: string, viewerId: string, maxViewers: number): Promise<boolean>
  /** Withdraws a grant and tells every instance (the feed's `revoked`); false when there was none. */
  revoke (ownerId: string, viewerId: string): Promise<boolean>
  /**
   * Whether each owner has granted each viewer, in the order asked: one round trip for all of
   * them (on a cluster, one per node holding an owner), so re-checking many subscriptions is cheap.
   */
  areGranted (pairs: readonly GrantPair[]): Promise<boolean[]>
  /** Who may read `ownerId`, sorted. */
  viewersOf (ownerId: string): Promise<string[]>
  /** Whom `viewerId` may read, sorted. */
  watchedBy (viewerId: string): Promise<string[]>

  /**
   * Registers a device of `ownerId`, unless the owner already has `maxDevices`: the check and the
   * write are one step, so simultaneous creations cannot pass the cap. False when the cap refused it.
   */
  addDevice (ownerId: string, device: DeviceRecord, maxDevices: number): Promise<boolean>
  /** The owner's devices, oldest first. */
  devices (ownerId: string): Promise<DeviceInfo[]>
  /** Forgets a device and when it was seen; false when the owner had no such device. */
  removeDevice (ownerId: string, deviceId: string): Promise<boolean>
  /**
   * Whether `ownerId` has `deviceId` with this key hash; when it does, `seenAt` becomes its
   * `lastSeenAt` in the same step. Asked on every request with a device key, never cached, so a
   * removed device is refused at once by every instance.
   */
  verifyDevice (ownerId: string, deviceId: string, keyHash: string, seenAt: number): Promise<boolean>

  /** Replaces the user's alert rules as a whole (one step: never a mix of old and new); returns what is stored. */
  setAlertRules (userId: string, rules: AlertRules): Promise<AlertRules>
  /** The user's alert rules, or null when none are set. */
  alertRules (userId: string): Promise<AlertRules | null>
  /** Removes the user's alert rules, if there are any. */
  deleteAlertRules (userId: string): Promise<void>

  close (): Promise<void>
}

export class StoreUnavailableError extends Error {
  constructor (cause: unknown) {
    super('heart store unavailable', { cause })
    this.name = 'StoreUnavailableError'
  }
}

/**
 * A write Redis made, but fewer replicas than required confirmed it in time (REDIS_WAIT_REPLICAS):
 * a failover now could lose it.
 */
export class NotConfirmedError extends Error {
  constructor (readonly confirmed: number, readonly required: number) {
    super(`not confirmed: ${confirmed} of ${required} replicas acknowledged the write in time`)
    this.name = 'NotConfirmedError'
  }
}

/** Largest page a single history read returns; replays page through longer histories. */
export const HISTORY_PAGE_MAX = 1000
