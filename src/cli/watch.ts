/**
 * `heart-gateway watch <userId>`: prints a user's live readings, one line each, and keeps doing so
 * across server restarts by reconnecting and resubscribing with `since` (docs/protocol.md, "What a
 * client should do"). Readings go to stdout; connection news goes to stderr.
 */
import { WebSocket, type RawData } from 'ws'
import type { IncomingMessage } from 'node:http'
import { CloseCode } from '../heart/protocol.js'
import { compareIds, isHistoryId } from '../heart/reading.js'
import { CliError, DEFAULT_WS_URL, UsageError, baseUrl, clockTime, parse, serverMessage } from './common.js'
import { checkUserId, mintToken } from './token.js'

const SUBSCRIBE_REQ = 'watch'
const BACKOFF_FIRST_MS = 250
const BACKOFF_MAX_MS = 5000
const HANDSHAKE_TIMEOUT_MS = 10_000
/** An app-level ping this often; no frame at all by the next one means a dead connection. */
const KEEPALIVE_MS = 20_000
/** Refusals at the handshake that are worth retrying; any other status is final. */
const RETRY_STATUSES = new Set([429, 502, 503, 504])
/** Close codes after which the protocol says to reconnect (with `since`); any other code ends the watch. */
const RECONNECT_CODES = new Set<number>([CloseCode.GOING_AWAY, 1006, 1011, 1012, CloseCode.TRY_AGAIN_LATER])
/** Error codes of the subscribe reply worth a reconnect; the others (forbidden, bad_request, …) are final. */
const RETRY_ERRORS = new Set(['unavailable', 'internal', 'rate_limited'])

interface Frame {
  type?: string
  userId?: string
  id?: string | null
  bpm?: number
  ts?: number
  code?: string
  message?: string
  reqId?: unknown
  current?: { bpm: number, ts: number | null } | null
  truncated?: boolean
}

export interface WatchOptions {
  url: string
  userId: string
  token: string
  since?: string
  out: (line: string) => void
  log: (line: string) => void
}

export class Watch {
  private ws: WebSocket | null = null
  private lastId: string | undefined
  private attempt = 0
  private stopped = false
  private retryTimer: NodeJS.Timeout | undefined
  private keepalive: NodeJS.Timeout | undefined
  private heard = true
  /** Set when the socket is being ended on purpose: what happens next (retry or end with this error). */
  private verdict: { retry: true } | { retry: false, error: string } | null = null
  /** Why the watch ended, when it did not end by stop(). */
  private error: CliError | undefined
  private resolveDone!: () => void
  private rejectDone!: (err: Error) => void
  /** Resolves after stop(); rejects when the watch cannot go on (expired token, refused, …). */
  readonly done: Promise<void>

  constructor (private readonly opts: WatchOptions) {
    this.lastId = opts.since
    this.done = new Promise((resolve, reject) => { this.resolveDone = resolve; this.rejectDone = reject })
  }

  start (): Promise<void> {
    this.connect()
    return this.done
  }

  stop (): void {
    if (this.stopped) return
    this.stopped = true
    clearTimeout(this.retryTimer)
    clearInterval(this.keepalive)
    const ws = this.ws
    if (ws === null || ws.readyState === WebSocket.CLOSED) {
      this.settle()
      return
    }
    ws.once('close', () => this.settle())
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'bye')
    else ws.terminate()
    // A server that does not answer the close handshake does not hold us up.
    setTimeout(() => { ws.terminate(); this.settle() }, 1000).unref()
  }

  private settle (): void {
    if (this.error === undefined) this.resolveDone()
    else this.rejectDone(this.error)
  }

  private fail (message: string): void {
    this.error ??= new CliError(message)
    this.stop()
  }

  private connect (): void {
    this.verdict = null
    const ws = new WebSocket(`${this.opts.url}/heart/current`, {
      headers: { authorization: `Bearer ${this.opts.token}` },
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS
    })
    this.ws = ws
    ws.on('unexpected-response', (_req, res) => this.refused(ws, res))
    ws.on('open', () => {
      const frame: Record<string, string> = { type: 'subscribe', userId: this.opts.userId, reqId: SUBSCRIBE_REQ }
      if (this.lastId !== undefined) frame.since = this.lastId
      ws.send(JSON.stringify(frame))
      this.heard = true
      clearInterval(this.keepalive)
      this.keepalive = setInterval(() => {
        if (!this.heard) {
          this.opts.log('no answer from the server: reconnecting')
          ws.terminate()
          return
        }
        this.heard = false
        ws.send('{"type":"ping"}')
      }, KEEPALIVE_MS)
    })
    ws.on('ping', () => { this.heard = true })
    ws.on('message', (data: RawData) => {
      this.heard = true
      this.onFrame(ws, String(data))
    })
    // Connection failures end in 'close' (1006) too; the reason is shown there.
    let failure: string | undefined
    ws.on('error', (err: Error & { code?: string }) => { failure = err.code ?? err.message })
    ws.on('close', (code: number, reason: Buffer) => {
      clearInterval(this.keepalive)
      if (this.stopped) return
      const verdict = this.verdict
      if (verdict !== null) {
        if (verdict.retry) this.retry('')
        else this.fail(verdict.error)
        return
      }
      const why = `${code}${reason.length > 0 ? ' ' + String(reason) : ''}${failure !== undefined ? ', ' + failure : ''}`
      if (code === CloseCode.TOKEN_EXPIRED) {
        this.fail(`token expired (4001): get a new one (heart-gateway token ${this.opts.userId}) and run watch again${this.lastId !== undefined ? ` with --since ${this.lastId}` : ''}`)
      } else if (RECONNECT_CODES.has(code)) {
        this.retry(failure !== undefined ? `cannot connect (${failure})` : `connection closed (${why})`)
      } else {
        this.fail(`the server closed the connection (${why})`)
      }
    })
  }

  /** The handshake got an HTTP answer instead of an upgrade: show the server's message. */
  private refused (ws: WebSocket, res: IncomingMessage): void {
    let text = ''
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => { text += chunk })
    res.on('end', () => {
      const status = res.statusCode ?? 0
      const message = `handshake refused: ${serverMessage(status, text)}`
      if (RETRY_STATUSES.has(status)) {
        this.opts.log(message)
        this.verdict = { retry: true }
      } else {
        this.verdict = { retry: false, error: message }
      }
      ws.terminate()
    })
  }

  private onFrame (ws: WebSocket, text: string): void {
    let frame: Frame
    try {
      frame = JSON.parse(text) as Frame
    } catch {
      return
    }
    switch (frame.type) {
      case 'subscribed': {
        if (frame.reqId !== SUBSCRIBE_REQ) return
        this.attempt = 0
        const current = frame.current == null ? 'no reading yet' : `current ${frame.current.bpm} bpm${frame.current.ts === null ? '' : ' at ' + clockTime(frame.current.ts)}`
        const resumed = this.lastId === undefined ? '' : `, resuming after ${this.lastId}`
        this.opts.log(`watching ${this.opts.userId} at ${this.opts.url} (${current}${resumed}${frame.truncated === true ? '; some readings since then were already trimmed from history' : ''})`)
        return
      }
      case 'reading': {
        if (frame.userId !== this.opts.userId || typeof frame.bpm !== 'number' || typeof frame.ts !== 'number') return
        const id = frame.id ?? null
        if (id !== null) {
          // The protocol guarantees no duplicates within a subscription; this also covers the seam of a reconnect.
          if (this.lastId !== undefined && compareIds(id, this.lastId) <= 0) return
          this.lastId = id
        }
        this.opts.out(`${clockTime(frame.ts)}  ${frame.userId}  ${frame.bpm} bpm  ${id ?? '-'}`)
        return
      }
      case 'revoked':
        if (frame.userId === this.opts.userId) this.fail(`access to ${this.opts.userId} was revoked by its owner`)
        return
      case 'error': {
        const message = `${frame.code ?? 'error'}: ${frame.message ?? ''}`
        if (RETRY_ERRORS.has(frame.code ?? '') && (frame.reqId === SUBSCRIBE_REQ || frame.code === 'unavailable')) {
          // The subscription is gone (docs/protocol.md): a new connection resubscribes with since.
          this.opts.log(message)
          this.verdict = { retry: true }
          ws.close(1000)
        } else if (frame.reqId === SUBSCRIBE_REQ) {
          this.fail(`subscribe refused: ${message}`)
        } else {
          this.opts.log(message)
        }
      }
    }
  }

  private retry (why: string): void {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt)
    const delay = Math.round(base / 2 + Math.random() * base / 2)
    this.attempt++
    const resume = this.lastId === undefined ? '' : ` since ${this.lastId}`
    this.opts.log(`${why === '' ? '' : why + '; '}reconnecting in ${(delay / 1000).toFixed(1)} s${resume}`)
    this.retryTimer = setTimeout(() => this.connect(), delay)
  }
}

export async function watchCommand (args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { url: { type: 'string' }, token: { type: 'string' }, since: { type: 'string' } })
  const [user, ...extra] = positionals
  if (extra.length > 0) throw new UsageError('usage: heart-gateway watch <userId> [--url URL] [--token T] [--since ID]')
  const userId = checkUserId(user)
  if (values.since !== undefined && !isHistoryId(values.since)) throw new UsageError(`--since must be a history id like 1764115200000-0, not "${values.since}"`)
  const opts: WatchOptions = {
    url: baseUrl(values.url ?? DEFAULT_WS_URL, 'ws'),
    userId,
    token: values.token ?? await mintToken(userId),
    out: (line) => process.stdout.write(line + '\n'),
    log: (line) => process.stderr.write(line + '\n')
  }
  if (values.since !== undefined) opts.since = values.since
  const watch = new Watch(opts)
  const onSignal = (): void => watch.stop()
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  await watch.start()
}
