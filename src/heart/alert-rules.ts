/**
 * An owner's alert rules (PUT /heart/:userId/alert-rules): the limits their viewers are alerted on.
 * Each store keeps them beside the user's readings (on Redis, in the user's slot, where the ingest
 * script can read them).
 */
export interface AlertRules {
  /** Alert above this bpm; absent: no high alert. */
  high?: number
  /** Alert below this bpm; absent: no low alert. */
  low?: number
  /** How long a limit must be crossed before the alert opens, in seconds (0: at the first reading). */
  sustainS: number
  /** Alert when the user goes offline. */
  offline: boolean
}

/** Limits a rule may set: outside these a heart rate is a sensor fault or not worth an alert. */
export const RULE_BPM_MIN = 30
export const RULE_BPM_MAX = 250
export const SUSTAIN_S_MAX = 600
/** Without `sustainS`, an alert opens at the first reading past a limit. */
export const SUSTAIN_S_DEFAULT = 0

/** The rule fields alone, in a new object: what a store keeps and answers, never the caller's object. */
export function ruleFields (r: AlertRules): AlertRules {
  const copy: AlertRules = { sustainS: r.sustainS, offline: r.offline }
  if (r.high !== undefined) copy.high = r.high
  if (r.low !== undefined) copy.low = r.low
  return copy
}
