import { ruleFields, type AlertRules } from './alert-rules.js'
import { MemoryFeed } from './memory-feed.js'
import { EPISODES_MAX, emptyEpisodeState, evaluateOffline, evaluateReading, type Alert, type EpisodeRules, type EpisodeState } from './episodes.js'
import { compareIds, type Current, type NewReading, type StoredReading } from './reading.js'
import { byCreation, type AlertQuery, type AppendResult, type DeviceInfo, type DeviceRecord, type GrantPair, type HeartStore, type HistoryPage, type HistoryQuery, type Snapshot } from './store.js'

interface UserData {
  current: Current | null
  history: StoredReading[]
  /** ts → id of the readings in history that carried their own ts: what makes a resend a duplicate. */
  idsByTs: Map<number, string>
  /** Newest id trimmed away, as Redis reports max-deleted-entry-id. */
  maxDeletedId: string
}

/**
 * The embedded store: everything in this process, for one instance and for trying the service
 * without Redis. Same contract as the Redis store, nothing survives a restart; its live side
 * is in memory-feed.ts, as the Redis store's is in redis-feed.ts.
 */
export class MemoryStore implements HeartStore {
  readonly kind = 'memory'
  readonly feed = new MemoryFeed()
  private readonly users = new Map<string, UserData>()
  private readonly viewers = new Map<string, Set<string>>()
  private readonly watching = new Map<string, Set<string>>()
  /** Owner -> device id -> the device and when it was last seen. */
  private readonly ownDevices = new Map<string, Map<string, DeviceRecord & { lastSeenAt: number | null }>>()
  private readonly episodeStates = new Map<string, EpisodeState>()
  private readonly episodes = new Map<string, Alert[]>()
  /** Users with the offline rule on → their newest reading's ts: the offline sweep. */
  private readonly offlineDue = new Map<string, number>()
  private alertOpened: (alert: Alert) => void = () => {}
  private readonly rules = new Map<string, AlertRules>()
  private lastMs = 0
  private seq = 0

  constructor (private readonly historyMax: number) {}

  private user (userId: string): UserData {
    let data = this.users.get(userId)
    if (data === undefined) {
      data = { current: null, history: [], idsByTs: new Map(), maxDeletedId: '0-0' }
      this.users.set(userId, data)
    }
    return data
  }

  /** Ids as Redis streams make them: milliseconds, then a sequence within the millisecond. */
  private nextId (): string {
    const now = Date.now()
    if (now > this.lastMs) {
      this.lastMs = now
      this.seq = 0
    } else {
      this.seq++
    }
    return `${this.lastMs}-${this.seq}`
  }

  async ping (): Promise<void> {}

  async current (userId: string): Promise<Current | null> {
    return this.users.get(userId)?.current ?? null
  }

  async currentBpm (userId: string): Promise<number | null> {
    return this.users.get(userId)?.current?.bpm ?? null
  }

  async snapshot (userId: string): Promise<Snapshot> {
    const data = this.users.get(userId)
    const open = Object.values(this.episodeStates.get(userId)?.open ?? {}).sort((a, b) => compareIds(a.alertId, b.alertId))
    return { current: data?.current ?? null, lastId: data?.history.at(-1)?.id ?? null, alerts: open.map((a) => ({ ...a })) }
  }

  async append (userId: string, readings: NewReading[]): Promise<AppendResult> {
    const data = this.user(userId)
    const ids: string[] = []
    const stored: StoredReading[] = []
    for (const r of readings) {
      const known = r.serverTs === true ? undefined : data.idsByTs.get(r.ts)
      if (known !== undefined) {
        ids.push(known)
        continue
      }
      const reading = { id: this.nextId(), bpm: r.bpm, ts: r.ts }
      if (r.serverTs !== true) data.idsByTs.set(r.ts, reading.id)
      ids.push(reading.id)
      stored.push(reading)
      // Ties go to the later reading, as in the Redis store: current is the one history lists last among the newest.
      if (data.current === null || data.current.ts === null || r.ts >= data.current.ts) {
        data.current = { bpm: r.bpm, ts: r.ts }
      }
    }
    data.history.push(...stored)
    const excess = data.history.length - this.historyMax
    if (excess > 0) {
      for (const r of data.history.slice(0, excess)) {
        if (data.idsByTs.get(r.ts) === r.id) data.idsByTs.delete(r.ts)
      }
      data.maxDeletedId = data.history[excess - 1].id
      data.history.splice(0, excess)
    }
    if (stored.length > 0) this.feed.publish(userId, stored)
    const alerts = this.evaluate(userId, stored)
    return { ids, duplicates: readings.length - stored.length, alerts }
  }

  /** The newly stored readings through the user's alert rules, as the ingest script does on Redis. */
  private evaluate (userId: string, stored: StoredReading[]): Alert[] {
    const rules = this.rulesOf(userId)
    let state = this.episodeStates.get(userId)
    if (rules === null && state === undefined) return []
    if (state === undefined) {
      state = emptyEpisodeState()
      this.episodeStates.set(userId, state)
    }
    const out: Alert[] = []
    for (const r of stored) out.push(...evaluateReading(state, rules, userId, r.bpm, r.ts, () => this.nextId()))
    const newest = this.users.get(userId)?.current?.ts ?? null
    if (rules?.offline === true && newest !== null) this.offlineDue.set(userId, Math.max(newest, this.offlineDue.get(userId) ?? 0))
    this.record(userId, out)
    return out
  }

  /** Keeps the episodes for `alerts`, tells every watcher, and the sink of the ones that opened. */
  private record (userId: string, transitions: Alert[]): void {
    if (transitions.length === 0) return
    const list = this.episodes.get(userId) ?? []
    for (const a of transitions) {
      const i = list.findIndex((e) => e.alertId === a.alertId)
      if (i === -1) list.push({ ...a })
      else list[i] = { ...a }
    }
    if (list.length > EPISODES_MAX) list.splice(0, list.length - EPISODES_MAX)
    this.episodes.set(userId, list)
    for (const a of transitions) {
      this.feed.publishAlert(userId, { ...a })
      if (a.state === 'open') this.alertOpened({ ...a })
    }
  }

  async openOffline (userId: string, lastTs: number, offlineAfterMs: number): Promise<Alert | null> {
    const current = this.users.get(userId)?.current ?? null
    if (current === null || current.ts !== lastTs) return null
    const state = this.episodeStates.get(userId) ?? emptyEpisodeState()
    const alert = evaluateOffline(state, this.rulesOf(userId), userId, lastTs, current.bpm, offlineAfterMs, () => this.nextId())
    if (alert === null) return null
    this.episodeStates.set(userId, state)
    this.record(userId, [alert])
    return { ...alert }
  }

  async sweepOffline (offlineAfterMs: number): Promise<void> {
    const before = Date.now() - offlineAfterMs
    for (const [userId, ts] of [...this.offlineDue]) {
      if (ts > before) continue
      this.offlineDue.delete(userId)
      await this.openOffline(userId, ts, offlineAfterMs)
    }
  }

  async alerts (userId: string, { since, limit }: AlertQuery): Promise<Alert[]> {
    const list = this.episodes.get(userId) ?? []
    const after = since === undefined ? list.slice(-limit) : list.filter((a) => compareIds(a.alertId, since) > 0).slice(0, limit)
    return after.map((a) => ({ ...a }))
  }

  onAlertOpened (sink: (alert: Alert) => void): void {
    this.alertOpened = sink
  }

  async history (userId: string, { since, limit }: HistoryQuery): Promise<HistoryPage> {
    const data = this.users.get(userId)
    if (data === undefined) return { readings: [], truncated: false }
    if (since === undefined) return { readings: data.history.slice(-limit), truncated: false }
    const start = data.history.findIndex((r) => compareIds(r.id, since) > 0)
    const readings = start === -1 ? [] : data.history.slice(start, start + limit)
    return { readings, truncated: compareIds(since, data.maxDeletedId) < 0 }
  }

  async grant (ownerId: string, viewerId: string, maxViewers: number): Promise<boolean> {
    const viewers = this.viewers.get(ownerId)
    if (viewers !== undefined && !viewers.has(viewerId) && viewers.size >= maxViewers) return false
    addTo(this.viewers, ownerId, viewerId)
    addTo(this.watching, viewerId, ownerId)
    return true
  }

  async revoke (ownerId: string, viewerId: string): Promise<boolean> {
    const had = removeFrom(this.viewers, ownerId, viewerId)
    removeFrom(this.watching, viewerId, ownerId)
    this.feed.publishRevoked(ownerId, viewerId)
    return had
  }

  async areGranted (pairs: readonly GrantPair[]): Promise<boolean[]> {
    return pairs.map(({ ownerId, viewerId }) => this.viewers.get(ownerId)?.has(viewerId) ?? false)
  }

  async viewersOf (ownerId: string): Promise<string[]> {
    return [...this.viewers.get(ownerId) ?? []].sort()
  }

  async watchedBy (viewerId: string): Promise<string[]> {
    return [...this.watching.get(viewerId) ?? []].sort()
  }

  async addDevice (ownerId: string, device: DeviceRecord, maxDevices: number): Promise<boolean> {
    const devices = this.ownDevices.get(ownerId) ?? new Map()
    if (devices.size >= maxDevices) return false
    devices.set(device.deviceId, { ...device, lastSeenAt: null })
    this.ownDevices.set(ownerId, devices)
    return true
  }

  async devices (ownerId: string): Promise<DeviceInfo[]> {
    return [...this.ownDevices.get(ownerId)?.values() ?? []]
      .map(({ deviceId, name, createdAt, lastSeenAt }) => ({ deviceId, name, createdAt, lastSeenAt }))
      .sort(byCreation)
  }

  async removeDevice (ownerId: string, deviceId: string): Promise<boolean> {
    const devices = this.ownDevices.get(ownerId)
    if (devices === undefined || !devices.delete(deviceId)) return false
    if (devices.size === 0) this.ownDevices.delete(ownerId)
    return true
  }

  async verifyDevice (ownerId: string, deviceId: string, keyHash: string, seenAt: number): Promise<boolean> {
    const device = this.ownDevices.get(ownerId)?.get(deviceId)
    if (device === undefined || device.keyHash !== keyHash) return false
    device.lastSeenAt = seenAt
    return true
  }

  async setAlertRules (userId: string, rules: AlertRules): Promise<AlertRules> {
    this.rules.set(userId, ruleFields(rules))
    return ruleFields(rules)
  }

  async alertRules (userId: string): Promise<AlertRules | null> {
    const stored = this.rules.get(userId)
    return stored === undefined ? null : ruleFields(stored)
  }

  async deleteAlertRules (userId: string): Promise<void> {
    this.rules.delete(userId)
  }

  /** The user's alert rules as the episode rule reads them. */
  private rulesOf (userId: string): EpisodeRules | null {
    return this.rules.get(userId) ?? null
  }

  async close (): Promise<void> {
    this.episodeStates.clear()
    this.episodes.clear()
    this.users.clear()
    this.viewers.clear()
    this.watching.clear()
    this.ownDevices.clear()
    this.rules.clear()
  }
}

function addTo (map: Map<string, Set<string>>, key: string, value: string): void {
  let set = map.get(key)
  if (set === undefined) map.set(key, set = new Set())
  set.add(value)
}

function removeFrom (map: Map<string, Set<string>>, key: string, value: string): boolean {
  const set = map.get(key)
  if (set === undefined || !set.delete(value)) return false
  if (set.size === 0) map.delete(key)
  return true
}
