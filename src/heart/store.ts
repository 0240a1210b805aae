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
}

export interface HistoryPage {
  readings: StoredReading[]
  /** True when `since` was given and readings after it were trimmed from history (HISTORY_MAX). */
  truncated: boolean
}

export interface HistoryQuery {
  /** Exclusive lower bound; without it the newest `limit` readings are returned. */
  since?: string | undefined
  limit: number
}

/** Receives what the live feed delivers. */
export interface FeedListener {
  reading (userId: string, reading: LiveReading): void
  /** The feed's connection came back and every watched user is subscribed again: readings in between may have been missed. */
  resumed (): void
  /** `ownerId` withdrew `viewerId`'s grant (on any instance). */
  revoked (ownerId: string, viewerId: string): void
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
 * Every method rejects with StoreUnavailableError when the backing store does not answer.
 */
export interface HeartStore {
  readonly kind: 'redis' | 'memory'
  readonly feed: ReadingFeed
  ping (): Promise<void>
  current (userId: string): Promise<Current | null>
  /** The current bpm alone (the original protocol's answer): one key read on Redis. */
  currentBpm (userId: string): Promise<number | null>
  snapshot (userId: string): Promise<Snapshot>
  /** Appends to history, moves the current value forward when a reading is newer, publishes: all or nothing. Returns the history ids in order. */
  append (userId: string, readings: NewReading[]): Promise<string[]>
  history (userId: string, query: HistoryQuery): Promise<HistoryPage>

  /**
   * Lets `viewerId` read `ownerId`'s heart rate, unless the owner already has `maxViewers` others:
   * the check and the write are one step, so simultaneous grants cannot pass the cap. Granting
   * again is harmless. False when the cap refused it.
   */
  grant (ownerId: string, viewerId: string, maxViewers: number): Promise<boolean>
  /** Withdraws a grant and tells every instance (the feed's `revoked`); false when there was none. */
  revoke (ownerId: string, viewerId: string): Promise<boolean>
  isGranted (ownerId: string, viewerId: string): Promise<boolean>
  /** Who may read `ownerId`, sorted. */
  viewersOf (ownerId: string): Promise<string[]>
  /** Whom `viewerId` may read, sorted. */
  watchedBy (viewerId: string): Promise<string[]>

  close (): Promise<void>
}

export class StoreUnavailableError extends Error {
  constructor (cause: unknown) {
    super('heart store unavailable', { cause })
    this.name = 'StoreUnavailableError'
  }
}

/** Largest page a single history read returns; replays page through longer histories. */
export const HISTORY_PAGE_MAX = 1000
