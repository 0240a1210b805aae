/** What the notifier needs of an alert that has just opened (the episode itself lives with the store). */
export interface OpenedAlert {
  alertId: string
  /** The wearer: the owner of the readings. */
  userId: string
  kind: 'high' | 'low' | 'offline'
  /** The reading that opened it; for `offline`, the last reading before the silence, or null. */
  bpm: number | null
  openedAt: number
}
