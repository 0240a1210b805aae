import type { Alert } from './episodes.js'
/**
 * The wire protocol of /heart/current: frame types, error codes and close codes.
 * docs/protocol.md documents every one of them; test/protocol-doc.test.ts keeps the two in step.
 */
import type { Presence } from './freshness.js'
import { IngestError, parseReadings } from './ingest.js'
import { isHistoryId, isUserId, type Current, type NewReading, type StoredReading } from './reading.js'
import type { LiveReading } from './store.js'

/** JSON frame types a client may send. */
export const CLIENT_FRAME_TYPES = ['get', 'ping', 'subscribe', 'unsubscribe', 'refresh', 'publish'] as const
export type ClientFrameType = typeof CLIENT_FRAME_TYPES[number]

/** Codes of `{"type":"error","code":…}` frames. */
export const ERROR_CODES = [
  'bad_request', 'forbidden', 'unauthorized', 'unavailable', 'internal', 'too_many_subscriptions', 'rate_limited'
] as const
export type ErrorCode = typeof ERROR_CODES[number]

/** Close codes the server uses, with what a client should do (docs/protocol.md). */
export const CloseCode = {
  /** Server shutting down: reconnect at once (another instance answers). */
  GOING_AWAY: 1001,
  /** Policy: kept sending over MESSAGE_RATE_LIMIT. */
  POLICY: 1008,
  /** Frame over MAX_PAYLOAD_BYTES (sent by ws itself). */
  TOO_BIG: 1009,
  /** Unexpected server error. */
  INTERNAL: 1011,
  /** Too slow to read what it is sent: back off, reconnect with `since`. */
  TRY_AGAIN_LATER: 1013,
  /** The token reached `exp`: log in again, then reconnect. */
  TOKEN_EXPIRED: 4001
} as const

export type ReqId = string | number

export interface ParsedFrame {
  type: ClientFrameType
  userId?: string
  since?: string
  token?: string
  reqId?: ReqId
  /** `publish`: the readings to store, server time filled in. */
  readings?: NewReading[]
}

const TOKEN_MAX = 8192

export class FrameError extends Error {
  constructor (readonly code: ErrorCode, message: string, readonly reqId?: ReqId) {
    super(message)
  }
}

const REQ_ID_MAX = 64

function readReqId (value: unknown): ReqId | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'string' && value.length > 0 && value.length <= REQ_ID_MAX) return value
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value
  throw new FrameError('bad_request', `reqId must be a string of 1-${REQ_ID_MAX} characters or an integer`)
}

/** Parses a JSON frame (the text starts with `{`). Shape errors carry the frame's reqId when it has a usable one. */
export function parseJsonFrame (text: string): ParsedFrame {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new FrameError('bad_request', 'frame is not valid JSON')
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new FrameError('bad_request', 'frame must be a JSON object')
  }
  const obj = raw as Record<string, unknown>
  const reqId = readReqId(obj.reqId)
  const type = obj.type
  if (typeof type !== 'string' || !(CLIENT_FRAME_TYPES as readonly string[]).includes(type)) {
    throw new FrameError('bad_request', `unknown frame type; expected one of ${CLIENT_FRAME_TYPES.join(', ')}`, reqId)
  }
  const frame: ParsedFrame = { type: type as ClientFrameType }
  if (reqId !== undefined) frame.reqId = reqId
  if (type === 'ping') return frame
  if (type === 'refresh') {
    if (typeof obj.token !== 'string' || obj.token.length === 0 || obj.token.length > TOKEN_MAX) {
      throw new FrameError('bad_request', 'token must be a JWT string', reqId)
    }
    frame.token = obj.token
    return frame
  }
  if (type === 'publish') return parsePublish(obj, frame)
  if (!isUserId(obj.userId)) {
    throw new FrameError('bad_request', USER_ID_MESSAGE, reqId)
  }
  frame.userId = obj.userId
  if (type === 'subscribe' && obj.since !== undefined) {
    if (!isHistoryId(obj.since)) throw new FrameError('bad_request', 'since must be a history id like "1764115200000-0"', reqId)
    frame.since = obj.since
  }
  return frame
}

const USER_ID_MESSAGE = 'userId must be 1-64 characters of A-Z a-z 0-9 _ -'

/** `publish`: the ingest rules (src/heart/ingest.ts) on the frame's own fields; `userId` is optional (the socket's user). */
function parsePublish (obj: Record<string, unknown>, frame: ParsedFrame): ParsedFrame {
  const { type: _type, reqId: _reqId, userId, ...body } = obj
  if (userId !== undefined) {
    if (!isUserId(userId)) throw new FrameError('bad_request', USER_ID_MESSAGE, frame.reqId)
    frame.userId = userId
  }
  try {
    frame.readings = parseReadings(body, Date.now())
  } catch (err) {
    if (err instanceof IngestError) throw new FrameError('bad_request', err.message, frame.reqId)
    throw err
  }
  return frame
}

function reqIdTail (reqId: ReqId | undefined): string {
  return reqId === undefined ? '}' : `,"reqId":${JSON.stringify(reqId)}}`
}

/*
 * Frame builders. User ids and history ids are validated to safe characters and numbers are
 * numbers, so frames are assembled as strings (these are the hot frames); only reqId and
 * messages go through JSON.stringify.
 */
export function errorFrame (code: ErrorCode, message: string, reqId?: ReqId): string {
  return `{"type":"error","code":"${code}","message":${JSON.stringify(message)}${reqIdTail(reqId)}`
}

export function currentFrame (userId: string, current: Current | null, reqId?: ReqId): string {
  const bpm = current === null ? 'null' : String(current.bpm)
  const ts = current === null || current.ts === null ? 'null' : String(current.ts)
  return `{"type":"current","userId":"${userId}","bpm":${bpm},"ts":${ts}${reqIdTail(reqId)}`
}

export function pongFrame (reqId?: ReqId): string {
  return `{"type":"pong","ts":${Date.now()}${reqIdTail(reqId)}`
}

/** What `subscribed` tells about the user it answers for. */
export interface SubscribedState {
  current: Current | null
  lastId: string | null
  truncated: boolean
  state: Presence
  /** The newest reading's time, the one `state` is decided from; null when never. */
  lastTs: number | null
  /** The user's open alert episodes. */
  alerts: Alert[]
}

export function subscribedFrame (userId: string, s: SubscribedState, reqId?: ReqId): string {
  const cur = s.current === null ? 'null' : `{"bpm":${s.current.bpm},"ts":${s.current.ts === null ? 'null' : s.current.ts}}`
  const last = s.lastId === null ? 'null' : `"${s.lastId}"`
  return `{"type":"subscribed","userId":"${userId}","current":${cur},"lastId":${last},"state":"${s.state}","lastTs":${String(s.lastTs)}${s.truncated ? ',"truncated":true' : ''},"alerts":[${s.alerts.map(alertBody).join(',')}]${reqIdTail(reqId)}`
}

/** An alert episode's fields, as `alert` frames and `subscribed.alerts` carry them. */
function alertBody (a: Alert): string {
  return JSON.stringify({ alertId: a.alertId, userId: a.userId, kind: a.kind, state: a.state, bpm: a.bpm, ts: a.ts, openedAt: a.openedAt, ...(a.closedAt === undefined ? {} : { closedAt: a.closedAt }) })
}

/** An alert episode opened or closed: sent once each to the owner's and viewers' subscriptions. */
export function alertFrame (a: Alert): string {
  return `{"type":"alert",${alertBody(a).slice(1)}`
}

/** The user went offline, or is online again (sent just before the reading that makes it so). */
export function statusFrame (userId: string, state: Presence, lastTs: number | null): string {
  return `{"type":"status","userId":"${userId}","state":"${state}","lastTs":${String(lastTs)}}`
}

/** The answer to `publish`: one history id per reading sent, in order (a resend's is the stored reading's). */
export function publishedFrame (ids: string[], duplicates: number, reqId?: ReqId): string {
  return `{"type":"published","ids":[${ids.map((id) => `"${id}"`).join(',')}],"duplicates":${duplicates}${reqIdTail(reqId)}`
}

export function unsubscribedFrame (userId: string, reqId?: ReqId): string {
  return `{"type":"unsubscribed","userId":"${userId}"${reqIdTail(reqId)}`
}

export function revokedFrame (ownerId: string): string {
  return `{"type":"revoked","userId":"${ownerId}"}`
}

export function refreshedFrame (exp: number, reqId?: ReqId): string {
  return `{"type":"refreshed","exp":${exp}${reqIdTail(reqId)}`
}

export function readingFrame (userId: string, r: LiveReading | StoredReading): string {
  return `{"type":"reading","userId":"${userId}","id":${r.id === null ? 'null' : `"${r.id}"`},"bpm":${r.bpm},"ts":${r.ts}}`
}

/** The original protocol's answer: the heart rate as a decimal string, `0` when there is none. */
export function legacyReply (bpm: number | null): string {
  return bpm === null ? '0' : String(bpm)
}
