/**
 * Alert episodes: the rule that opens and closes them, for the embedded store. The Redis store
 * runs the same rule inside its ingest script (redis-episodes.ts), so an episode changes in the
 * same atomic step as the reading that causes it; the store contract tests hold both to it.
 *
 * - `high` opens when readings stay above `high` for `sustainS` seconds (at the first reading
 *   above it when `sustainS` is 0) and closes at the first reading at or below `high - 5`;
 * - `low` likewise: below `low`, closing at `low + 5` or above;
 * - `offline` opens when the user goes offline with the rule on, and closes at the next reading.
 * A reading older than one already evaluated changes no episode (it is late, not news).
 */

/** What the rule reads of an owner's alert rules (alert-rules.ts). */
export interface EpisodeRules {
  high?: number | undefined
  low?: number | undefined
  sustainS: number
  offline: boolean
}

export type AlertKind = 'high' | 'low' | 'offline'
export const ALERT_KINDS: readonly AlertKind[] = ['high', 'low', 'offline']

/** One episode, as frames, the alerts list and WeChat messages show it. */
export interface Alert {
  /** Names the episode: the same id when it opens and when it closes. Ordered like history ids. */
  alertId: string
  userId: string
  kind: AlertKind
  state: 'open' | 'closed'
  /** The reading that opened it; for `offline`, the last reading before the silence. */
  bpm: number | null
  /** When the reading that opened it was taken; for `offline`, the last reading's time. */
  ts: number | null
  openedAt: number
  closedAt?: number
}

/** A closing reading must come back this far inside the limit: one noisy reading does not flap an episode. */
export const HYSTERESIS_BPM = 5
/** Episodes kept per user for GET /heart/:userId/alerts. */
export const EPISODES_MAX = 1000

/** What the rule remembers between readings. */
export interface EpisodeState {
  open: Partial<Record<AlertKind, Alert>>
  /** When readings first crossed a limit without the episode opening yet (sustainS). */
  pending: Partial<Record<'high' | 'low', number>>
  /** Newest reading time evaluated. */
  lastTs: number | null
}

export function emptyEpisodeState (): EpisodeState {
  return { open: {}, pending: {}, lastTs: null }
}

function crossed (kind: 'high' | 'low', limit: number, bpm: number): boolean {
  return kind === 'high' ? bpm > limit : bpm < limit
}

function recovered (kind: 'high' | 'low', limit: number | undefined, bpm: number): boolean {
  if (limit === undefined) return true
  return kind === 'high' ? bpm <= limit - HYSTERESIS_BPM : bpm >= limit + HYSTERESIS_BPM
}

/**
 * Runs one reading through the rules; `newId` names an episode that opens. Returns the
 * transitions in order (an episode's `closed` shares its `alertId` with its `open`).
 */
export function evaluateReading (
  state: EpisodeState, rules: EpisodeRules | null, userId: string, bpm: number, ts: number, newId: () => string
): Alert[] {
  if (state.lastTs !== null && ts < state.lastTs) return []
  state.lastTs = ts
  const out: Alert[] = []
  const offline = state.open.offline
  if (offline !== undefined) {
    delete state.open.offline
    out.push({ ...offline, state: 'closed', closedAt: ts })
  }
  for (const kind of ['high', 'low'] as const) {
    const limit = rules?.[kind]
    const open = state.open[kind]
    if (open !== undefined) {
      delete state.pending[kind]
      if (recovered(kind, limit, bpm)) {
        delete state.open[kind]
        out.push({ ...open, state: 'closed', closedAt: ts })
      }
      continue
    }
    if (limit === undefined || !crossed(kind, limit, bpm)) {
      delete state.pending[kind]
      continue
    }
    const since = state.pending[kind] ?? ts
    if (ts - since >= (rules?.sustainS ?? 0) * 1000) {
      delete state.pending[kind]
      const alert: Alert = { alertId: newId(), userId, kind, state: 'open', bpm, ts, openedAt: ts }
      state.open[kind] = alert
      out.push(alert)
    } else {
      state.pending[kind] = since
    }
  }
  return out
}

/**
 * The user went offline (no reading since `lastTs` for OFFLINE_AFTER_MS): opens `offline` once,
 * if the rule is on, none is open, and no reading came after `lastTs`.
 */
export function evaluateOffline (
  state: EpisodeState, rules: EpisodeRules | null, userId: string, lastTs: number, lastBpm: number | null, offlineAfterMs: number, newId: () => string
): Alert | null {
  if (rules?.offline !== true || state.open.offline !== undefined) return null
  if (state.lastTs !== null && state.lastTs > lastTs) return null
  const alert: Alert = { alertId: newId(), userId, kind: 'offline', state: 'open', bpm: lastBpm, ts: lastTs, openedAt: lastTs + offlineAfterMs }
  state.open.offline = alert
  return alert
}

const isMs = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0

/** An episode as the Redis scripts write it (JSON), or null for anything else. */
export function parseAlert (value: unknown): Alert | null {
  if (typeof value !== 'object' || value === null) return null
  const a = value as Record<string, unknown>
  if (typeof a.alertId !== 'string' || typeof a.userId !== 'string') return null
  if (!(ALERT_KINDS as readonly unknown[]).includes(a.kind) || (a.state !== 'open' && a.state !== 'closed')) return null
  if ((a.bpm !== null && !isMs(a.bpm)) || (a.ts !== null && !isMs(a.ts)) || !isMs(a.openedAt)) return null
  if (a.state === 'closed' ? !isMs(a.closedAt) : a.closedAt !== undefined) return null
  const alert: Alert = { alertId: a.alertId, userId: a.userId, kind: a.kind as AlertKind, state: a.state, bpm: a.bpm, ts: a.ts, openedAt: a.openedAt }
  if (a.state === 'closed') alert.closedAt = a.closedAt as number
  return alert
}

/** Parses the scripts' JSON texts, dropping any that is not an episode. */
export function parseAlerts (texts: string[]): Alert[] {
  const out: Alert[] = []
  for (const text of texts) {
    try {
      const a = parseAlert(JSON.parse(text))
      if (a !== null) out.push(a)
    } catch {}
  }
  return out
}
