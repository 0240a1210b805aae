/** Types of heart-client.js, the mini-program client of heart-gateway (usage: README.md here). */

export type HeartClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'

/** A live or replayed reading. `id` orders a user's readings; it is null for values written outside history. */
export interface Reading {
  userId: string
  id: string | null
  bpm: number
  ts: number | null
}

export interface Current {
  bpm: number
  ts: number | null
}

export interface SubscribeResult {
  /** The user's current value when the subscription started, null when there is none. */
  current: Current | null
  /** Readings after the resume point were already trimmed from history: there is a gap before the replay. */
  truncated?: true
}

/**
 * Rejections carry a `code`: one of the server's error codes (`bad_request`, `forbidden`,
 * `unauthorized`, `unavailable`, `internal`, `too_many_subscriptions`, `rate_limited`) or the
 * client's own: `timeout`, `disconnected` (the socket went before the answer came),
 * `not_connected` (connect() was never called), `closed`, `dropped` (a publish whose readings all
 * fell out of the full queue), `cancelled` (unsubscribed
 * while a subscribe was pending), `token_expired` (reported to onError when a 4001 cannot be
 * handled because there is no onTokenExpired), `refused` (reported to onError when the server
 * answered the handshake with an HTTP status retrying cannot fix; the client then closes),
 * `too_many_sockets` (reported to onError when connectSocket failed with `exceed max task count`:
 * the mini program already has 5 sockets; the client then closes — use one client per app).
 */
export interface HeartClientError extends Error {
  code: string
  /** `refused` only: the HTTP status and body of the refusal. */
  status?: number
  body?: string
}

/** A user's presence: offline when no reading came for the server's OFFLINE_AFTER_MS (or never). */
export interface Status {
  userId: string
  state: 'online' | 'offline'
  /** The `ts` of the user's last reading; null when there has been none. */
  lastTs: number | null
}

/** An alert episode opening or closing (rules set with PUT /heart/:userId/alert-rules). */
export interface Alert {
  userId: string
  alertId: string
  kind: 'high' | 'low' | 'offline'
  state: 'open' | 'closed'
  /** The reading that opened the episode and its `ts`; for `offline`, the last reading before the silence (null if none). */
  bpm: number | null
  ts: number | null
  openedAt: number
  /** Closed alerts only: when; null when it closed while the client was away (learnt on resubscribe). */
  closedAt?: number | null
}

/** A reading to publish; without `ts`, the time of the publish() call. */
export interface NewReading {
  bpm: number
  ts?: number
}

/** The server's answer to a publish: one history id per reading sent, in order (a resend's is the stored one's). */
export interface PublishResult {
  ids: string[]
  /** Readings already stored (resends), which stored nothing new. */
  duplicates: number
}

/** Options of subscribe(). */
export interface SubscribeOptions {
  /** Start after this history id (the newest reading the app already has). Only for a new subscription. */
  since?: string | null
}

/** How a socket ended, passed to onDisconnect. */
export interface DisconnectInfo {
  /** The close code; 1006 when the connection failed or was given up without one. */
  code: number
  reason: string
  /** Whether this socket had opened: false means a connection attempt failed. */
  opened: boolean
  /** When the client connects again; null when it does not (it closes: see onError). */
  retryInMs: number | null
  /** A refused handshake, where the platform reports it (the ws adapter does): its HTTP status and body. */
  status?: number
  body?: string
}

/** The part of a mini program's `SocketTask` the client uses. */
export interface SocketTaskLike {
  onOpen (listener: (res: unknown) => void): void
  onMessage (listener: (res: { data: string | ArrayBuffer }) => void): void
  onClose (listener: (res: { code: number, reason: string }) => void): void
  /** `statusCode` and `body`: a refused handshake, from platforms that see it (ws-adapter.js over Node's `ws`). */
  onError (listener: (res: { errMsg: string, statusCode?: number, body?: string }) => void): void
  send (opts: { data: string, success?: (res: unknown) => void, fail?: (res: { errMsg: string }) => void }): void
  close (opts: { code?: number, reason?: string, success?: (res: unknown) => void, fail?: (res: { errMsg: string }) => void }): void
}

/** The part of `wx` the client uses; the app visibility functions are optional. */
export interface WxLike {
  connectSocket (opts: { url: string, header?: Record<string, string>, fail?: (res: { errMsg: string }) => void }): SocketTaskLike
  onAppHide? (listener: () => void): void
  onAppShow? (listener: () => void): void
  offAppHide? (listener: () => void): void
  offAppShow? (listener: () => void): void
}

export interface HeartClientOptions {
  /** `wss://your.domain/heart/current` (a legal socket domain of the mini program). */
  url: string
  /** The JWT sent as `Authorization: Bearer …` on every connection. */
  token: string
  /** Defaults to the mini program's global `wx`; tests pass a shim. */
  wx?: WxLike
  /**
   * Called when the server closes with 4001, when the stored token has expired by the server's
   * clock (learnt from `pong`) before a connection, or after 3 handshakes in a row failed with a
   * token that looks valid: resolve with a new token, and the client reconnects with it.
   * Without it, a 4001 closes the client.
   */
  onTokenExpired?: () => Promise<string> | string
  onStateChange?: (state: HeartClientState, previous: HeartClientState) => void
  /** The owner withdrew access to `userId`: its subscription is gone. */
  onRevoked?: (userId: string) => void
  /** A subscription was renewed after a reconnect (`truncated`: readings were lost past history's length). */
  onResubscribed?: (userId: string, result: SubscribeResult) => void
  /**
   * A subscribed user's presence: on every (re)subscription whose state differs from the last one
   * reported (a new offline period counts), and on each change while subscribed.
   */
  onStatus?: (status: Status) => void
  /**
   * An alert of a subscribed user opened or closed, each transition once: live, and on every
   * (re)subscription the open ones not yet reported (opened while the client was away) and the
   * ones reported open that closed meanwhile (`closedAt` null).
   */
  onAlert?: (alert: Alert) => void
  /** A socket ended without close() (the server closed it, the network went, an attempt failed). */
  onDisconnect?: (info: DisconnectInfo) => void
  /** Errors nobody awaits: error frames without a request, failures of the app's own callbacks, of onTokenExpired. */
  onError?: (err: HeartClientError | Error) => void
  /** An application-level ping this often while open. Default 20000. */
  pingIntervalMs?: number
  /** Nothing received for this long (or a connection that does not open): the socket is given up. Default 45000. */
  deadAfterMs?: number
  /** How long a sent request waits for its answer (from when it is sent). Default 10000. */
  requestTimeoutMs?: number
  /** Published readings that may wait for a connection; past it the oldest are dropped (see droppedReadings). Default 600. */
  publishQueueMax?: number
  /** Reconnect delays: exponential from initialMs up to maxMs, with full jitter. Defaults 500 and 2000. After 1001: a random 0-2 s. */
  backoff?: { initialMs?: number, maxMs?: number }
}

export declare class HeartClient {
  constructor (options: HeartClientOptions)
  readonly state: HeartClientState
  /** Starts connecting; the client then keeps a connection up until close(). */
  connect (): void
  /** Ends everything: pending promises reject with `closed`, subscriptions are forgotten. */
  close (): void
  /** Readings of `userId`, across reconnects, each once and in order; lives until unsubscribe() or close(), and never times out. */
  subscribe (userId: string, onReading: (reading: Reading) => void, options?: SubscribeOptions): Promise<SubscribeResult>
  /** No reading of `userId` is delivered after this call. */
  unsubscribe (userId: string): Promise<void>
  /** The current value; both fields null when there is none. */
  get (userId: string): Promise<{ bpm: number | null, ts: number | null }>
  /**
   * Stores readings of the token's own user (1 to 500): resolves when the server answered. While
   * the socket is down they wait (at most publishQueueMax, oldest dropped first; a publish left
   * with none rejects with `dropped`) and go out in order on reconnect; one whose answer was lost
   * is sent again, a duplicate the server stores once.
   */
  publish (readings: NewReading | NewReading[]): Promise<PublishResult>
  /** Readings publish() dropped unsent because the queue was full. */
  readonly droppedReadings: number
  /** Extends the open socket's life to the new token's `exp` and keeps it for later reconnects. */
  refresh (token: string): Promise<{ exp: number }>
}

export declare const CloseCode: {
  readonly NORMAL: 1000
  readonly GOING_AWAY: 1001
  readonly ABNORMAL: 1006
  readonly POLICY: 1008
  readonly TOO_BIG: 1009
  readonly INTERNAL: 1011
  readonly TRY_AGAIN_LATER: 1013
  readonly TOKEN_EXPIRED: 4001
}

/** Orders two history ids: negative, zero or positive. */
export declare function compareIds (a: string, b: string): number
