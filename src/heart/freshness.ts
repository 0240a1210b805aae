/** Whether a user's readings are current: the rule behind `status` frames and `subscribed.state`. */
export type Presence = 'online' | 'offline'

/**
 * The one place online/offline is decided: online while the newest reading's `ts` is less than
 * `offlineAfterMs` old, offline after that and when there was never a reading with a known time.
 * It goes by the reading's own `ts`, not by when this instance heard of it, so every instance
 * (and one that starts later, reading the time from the store) reaches the same answer at the same moment.
 */
export function presenceAt (lastTs: number | null, now: number, offlineAfterMs: number): Presence {
  return lastTs !== null && now - lastTs < offlineAfterMs ? 'online' : 'offline'
}
