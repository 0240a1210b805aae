import type { Alert } from '../heart/episodes.js'

/** What the notifier needs of an alert episode that has just opened (src/heart/episodes.ts). */
export type OpenedAlert = Pick<Alert, 'alertId' | 'userId' | 'kind' | 'bpm' | 'openedAt'>
