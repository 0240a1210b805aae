/** The user id rule shared by every entry point: WeChat openids (28 chars of [A-Za-z0-9_-]) fit. */
export const USER_ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$'
const userIdRe = new RegExp(USER_ID_PATTERN)

export function isUserId (value: unknown): value is string {
  return typeof value === 'string' && userIdRe.test(value)
}

/** Plausible human heart rates; anything outside is a sensor fault, not a reading. */
export const BPM_MIN = 20
export const BPM_MAX = 250

/** The current value of a user. `ts` is null for values written by writers that only `SET` the legacy key. */
export interface Current {
  bpm: number
  ts: number | null
}

/** A reading as a device submits it (after the server filled in a missing `ts`). */
export interface NewReading {
  bpm: number
  ts: number
}

/** A reading kept in history; `id` orders readings of one user and is what clients resume from (`since`). */
export interface StoredReading extends NewReading {
  id: string
}

/** History ids are Redis stream ids: `<ms>-<seq>`. */
export const HISTORY_ID_PATTERN = '^[0-9]{1,20}-[0-9]{1,20}$'
const historyIdRe = new RegExp(HISTORY_ID_PATTERN)

export function isHistoryId (value: unknown): value is string {
  return typeof value === 'string' && historyIdRe.test(value)
}

/**
 * Orders two well-formed history ids. Numbers are exact for every id Redis can produce
 * (milliseconds and sequence numbers far below 2^53); absurd client-sent ids still order sanely.
 */
export function compareIds (a: string, b: string): number {
  const da = a.indexOf('-')
  const db = b.indexOf('-')
  const diff = Number(a.slice(0, da)) - Number(b.slice(0, db))
  if (diff !== 0) return diff
  return Number(a.slice(da + 1)) - Number(b.slice(db + 1))
}
