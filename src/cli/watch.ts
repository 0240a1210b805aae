/**
 * `heart-gateway watch <userId>`: prints a user's live readings, one line each, and keeps doing so
 * across server restarts. The connection, its reconnects and the resume with `since` are the
 * mini-program client's (client/heart-client.js); this file only words what it reports. Readings
 * go to stdout; connection news goes to stderr.
 */
import { isHistoryId } from '../heart/reading.js'
import { CliError, DEFAULT_WS_URL, UsageError, baseUrl, clockTime, parse, serverMessage } from './common.js'
import { HeartClient, wsWx, type DisconnectInfo, type HeartClientError, type Reading, type SubscribeResult } from './heart-client.js'
import { checkUserId, mintToken } from './token.js'

/** Quicker than a phone's defaults: a person is watching the terminal. */
const BACKOFF = { initialMs: 250, maxMs: 5000 }

export interface WatchOptions {
  url: string
  userId: string
  token: string
  since?: string
  out: (line: string) => void
  log: (line: string) => void
}

export class Watch {
  private readonly client: InstanceType<typeof HeartClient>
  /** The newest reading printed (or --since): what a new watch would resume from. */
  private lastId: string | undefined
  private subscribed = false
  /** Why the watch ended, when it did not end by stop(). */
  private error: CliError | undefined
  private resolveDone!: () => void
  private rejectDone!: (err: Error) => void
  /** Resolves after stop(); rejects when the watch cannot go on (expired token, refused, …). */
  readonly done: Promise<void>

  constructor (private readonly opts: WatchOptions) {
    this.lastId = opts.since
    this.done = new Promise((resolve, reject) => { this.resolveDone = resolve; this.rejectDone = reject })
    this.client = new HeartClient({
      url: `${opts.url}/heart/current`,
      token: opts.token,
      wx: wsWx,
      backoff: BACKOFF,
      onStateChange: (state) => {
        // Subscribing once connected: the subscribe's timeout is for the server's answer, not for the server to come up.
        if (state === 'open' && !this.subscribed) this.subscribe()
        if (state === 'closed') this.settle()
      },
      onDisconnect: (info) => this.disconnected(info),
      onResubscribed: (_userId, result) => this.watching(result),
      onRevoked: () => this.fail(`access to ${opts.userId} was revoked by its owner`),
      onError: (err) => this.clientError(err)
    })
  }

  start (): Promise<void> {
    this.client.connect()
    return this.done
  }

  stop (): void {
    this.client.close()
  }

  private settle (): void {
    if (this.error === undefined) this.resolveDone()
    else this.rejectDone(this.error)
  }

  private fail (message: string): void {
    this.error ??= new CliError(message)
    this.stop()
  }

  private subscribe (): void {
    this.subscribed = true
    this.client.subscribe(this.opts.userId, (r) => this.print(r), { since: this.opts.since }).then((result) => this.watching(result), (err: HeartClientError) => {
      if (err.code !== 'closed') this.fail(`subscribe refused: ${err.code}: ${err.message}`)
    })
  }

  private watching (result: SubscribeResult): void {
    const c = result.current
    const current = c === null ? 'no reading yet' : `current ${c.bpm} bpm${c.ts === null ? '' : ' at ' + clockTime(c.ts)}`
    const resumed = this.lastId === undefined ? '' : `, resuming after ${this.lastId}`
    this.opts.log(`watching ${this.opts.userId} at ${this.opts.url} (${current}${resumed}${result.truncated === true ? '; some readings since then were already trimmed from history' : ''})`)
  }

  private print (r: Reading): void {
    if (r.id !== null) this.lastId = r.id
    this.opts.out(`${r.ts === null ? '--:--:--.---' : clockTime(r.ts)}  ${r.userId}  ${r.bpm} bpm  ${r.id ?? '-'}`)
  }

  private disconnected (info: DisconnectInfo): void {
    // A final end is reported through onError.
    if (info.retryInMs === null) return
    const why = info.status !== undefined
      ? `handshake refused: ${serverMessage(info.status, info.body ?? '')}`
      : info.opened
        ? `connection closed (${info.code}${info.reason === '' ? '' : ' ' + info.reason})`
        : `cannot connect (${info.reason === '' ? info.code : info.reason})`
    const resume = this.lastId === undefined ? '' : ` since ${this.lastId}`
    this.opts.log(`${why}; reconnecting in ${(info.retryInMs / 1000).toFixed(1)} s${resume}`)
  }

  private clientError (err: HeartClientError | Error): void {
    const code = 'code' in err ? err.code : undefined
    if (code === 'token_expired') {
      this.fail(`token expired (4001): get a new one (heart-gateway token ${this.opts.userId}) and run watch again${this.lastId !== undefined ? ` with --since ${this.lastId}` : ''}`)
    } else if (code === 'refused') {
      const e = err as HeartClientError
      this.fail(`handshake refused: ${serverMessage(e.status ?? 0, e.body ?? '')}`)
    } else {
      this.opts.log(`${code ?? 'error'}: ${err.message}`)
    }
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
