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

/** A reading as stored and served: its bpm and when it was measured. */
export interface Reading {
  bpm: number
  ts: number
}

/** A reading as a device submits it, after the server filled in a missing `ts`. */
export interface NewReading extends Reading {
  /**
   * The server filled in `ts` (the device sent none). Such a reading is never a duplicate; one
   * that carries its own `ts` is identified by it, so a resend of it is stored only once.
   */
  serverTs?: boolean
}

/** A reading kept in history; `id` orders readings of one user and is what clients resume from (`since`). */
export interface StoredReading extends Reading {
  id: string
}

/** History ids are Redis stream ids: `<ms>-<seq>`, each part an unsigned 64-bit number. */
export const HISTORY_ID_PATTERN = '^[0-9]{1,20}-[0-9]{1,20}$'
const historyIdRe = new RegExp(HISTORY_ID_PATTERN)
const U64_MAX = 2n ** 64n - 1n
/** The largest id a stream can hold: nothing can come after it. */
export const MAX_HISTORY_ID = `${U64_MAX}-${U64_MAX}`

/** The pattern alone lets through 20-digit parts Redis cannot parse (it would fail the request as a store error). */
export function isHistoryId (value: unknown): value is string {
  if (typeof value !== 'string' || !historyIdRe.test(value)) return false
  const dash = value.indexOf('-')
  return BigInt(value.slice(0, dash)) <= U64_MAX && BigInt(value.slice(dash + 1)) <= U64_MAX
}

/**
 * Orders two well-formed history ids. Numbers are exact for every id Redis can produce
 * (milliseconds and sequence numbers far below 2^53); absurd client-sent ids still order sanely.
 */
export function compareIds (a: string, b: string): number {
  const da = a.indexOf('-')
  const db = b.indexOf('-')
  // Same shape (the usual case on the delivery path): digit strings compare as text.
  if (da === db && a.length === b.length) return a < b ? -1 : a > b ? 1 : 0
  const diff = Number(a.slice(0, da)) - Number(b.slice(0, db))
  if (diff !== 0) return diff
  return Number(a.slice(da + 1)) - Number(b.slice(db + 1))
}
