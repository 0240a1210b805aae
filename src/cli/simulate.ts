/**
 * `heart-gateway simulate`: heart-rate devices for N users sending through the ingest API at a
 * given total rate, with a one-line progress display. Also run in-process by the demo.
 */
import { isUserId } from '../heart/reading.js'
import { CliError, DEFAULT_HTTP_URL, UsageError, baseUrl, parse, positiveInteger, positiveNumber } from './common.js'
import { HeartModel } from './heart-model.js'
import { BATCH_MAX } from '../heart/batch.js'
import { IngestError, apiKey, postReadings, type Reading } from './ingest.js'

/** Readings due are collected and sent this often: one reading per request at low rates, batches at high ones. */
const TICK_MS = 50
/** A user this far behind its schedule (the server is slow or away) skips ahead instead of sending a backlog. */
const MAX_LAG_MS = 5000
/** After a stop, readings already due get this long to be sent. */
const FLUSH_MS = 5000
/** The progress line is redrawn this often on a terminal, and written as a plain line this often elsewhere. */
const RENDER_TTY_MS = 250
const RENDER_LOG_MS = 10_000
const RATE_WINDOW_MS = 2000
/** Distinct error messages shown as they happen; later ones are only counted. */
const MAX_SHOWN_ERRORS = 10

export interface SimulatorOptions {
  users: number
  /** Readings per second, all users together. */
  rate: number
  /** HTTP base URL of the service. */
  url: string
  key: string
  /** User ids are `<prefix>1` … `<prefix>N`. */
  prefix: string
  durationS?: number
  /** Where the progress line and error messages go. */
  progress: NodeJS.WritableStream & { isTTY?: boolean }
}

export interface SimulatorSummary {
  users: number
  /** Readings the server accepted. */
  sent: number
  /** Requests that failed; their readings are lost (counted in `lost`). */
  errors: number
  lost: number
  elapsedS: number
  /** Accepted readings per second over the whole run. */
  rate: number
  /** Set when the run was cut short because no request could succeed (a refused API key). */
  fatal?: string
}

interface SimUser {
  id: string
  model: HeartModel
  /** When its next reading is due (epoch ms, fractional). */
  due: number
  pending: Reading[]
  inFlight: boolean
}

export class Simulator {
  readonly userIds: string[]
  private readonly users: SimUser[]
  private readonly intervalMs: number
  private sent = 0
  private errors = 0
  private lost = 0
  private startedAt = 0
  private endAt = Infinity
  private fatal: string | undefined
  private ticker: NodeJS.Timeout | undefined
  private renderer: NodeJS.Timeout | undefined
  private readonly inFlight = new Set<Promise<void>>()
  private readonly shownErrors = new Set<string>()
  private samples: Array<{ t: number, sent: number }> = []
  private finishing: Promise<SimulatorSummary> | undefined
  private finished = false
  private resolveDone!: (summary: SimulatorSummary) => void
  /** Resolves with the summary once the run has ended (duration reached, stop(), or a fatal error). */
  readonly done: Promise<SimulatorSummary>

  constructor (private readonly opts: SimulatorOptions) {
    this.userIds = Array.from({ length: opts.users }, (_, i) => `${opts.prefix}${i + 1}`)
    this.users = this.userIds.map((id) => ({ id, model: new HeartModel(), due: 0, pending: [], inFlight: false }))
    this.intervalMs = 1000 * opts.users / opts.rate
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
  }

  start (): Promise<SimulatorSummary> {
    this.startedAt = Date.now()
    if (this.opts.durationS !== undefined) this.endAt = this.startedAt + this.opts.durationS * 1000
    // Staggered, so the users' requests spread over each interval instead of arriving together.
    this.users.forEach((u, i) => { u.due = this.startedAt + i * this.intervalMs / this.users.length })
    this.ticker = setInterval(() => this.tick(), TICK_MS)
    const tty = this.opts.progress.isTTY === true
    this.renderer = setInterval(() => this.render(false), tty ? RENDER_TTY_MS : RENDER_LOG_MS)
    this.tick()
    return this.done
  }

  /** Stops generating; readings already due are still sent (for a bounded time). */
  async stop (): Promise<SimulatorSummary> {
    this.endAt = Math.min(this.endAt, Date.now())
    return await this.finish()
  }

  private tick (): void {
    const now = Date.now()
    for (const u of this.users) {
      this.generate(u, now)
      if (!u.inFlight && u.pending.length > 0) this.send(u)
    }
    if (now >= this.endAt) void this.finish()
  }

  private generate (u: SimUser, now: number): void {
    if (now - u.due > MAX_LAG_MS) u.due = now
    while (u.due <= now && u.due < this.endAt) {
      u.pending.push({ bpm: u.model.next(u.due), ts: Math.round(u.due) })
      u.due += this.intervalMs
    }
  }

  private send (u: SimUser): void {
    const batch = u.pending.splice(0, BATCH_MAX)
    u.inFlight = true
    const request = postReadings(this.opts.url, this.opts.key, u.id, batch).then((answer) => {
      this.sent += answer.accepted
    }, (err: Error) => {
      this.errors++
      this.lost += batch.length
      // A refused key fails every request alike: stop rather than count thousands of them.
      if (err instanceof IngestError && err.status === 401) {
        this.fatal ??= err.message
        void this.finish()
      } else {
        this.report(err.message)
      }
    }).finally(() => {
      u.inFlight = false
      this.inFlight.delete(request)
    })
    this.inFlight.add(request)
  }

  private report (message: string): void {
    if (this.shownErrors.has(message) || this.shownErrors.size >= MAX_SHOWN_ERRORS) return
    this.shownErrors.add(message)
    this.write(`${this.clearLine()}heart-gateway simulate: ${message}\n`)
    this.render(false)
  }

  private finish (): Promise<SimulatorSummary> {
    this.finishing ??= this.flush()
    return this.finishing
  }

  private async flush (): Promise<SimulatorSummary> {
    clearInterval(this.ticker)
    const deadline = Date.now() + FLUSH_MS
    if (this.fatal === undefined) for (const u of this.users) this.generate(u, Math.min(Date.now(), this.endAt))
    while (Date.now() < deadline) {
      if (this.fatal !== undefined) for (const u of this.users) this.lost += u.pending.splice(0).length
      for (const u of this.users) if (!u.inFlight && u.pending.length > 0) this.send(u)
      if (this.inFlight.size === 0) break
      let timer: NodeJS.Timeout | undefined
      await Promise.race([...this.inFlight, new Promise((resolve) => { timer = setTimeout(resolve, Math.max(1, deadline - Date.now())) })])
      clearTimeout(timer)
    }
    for (const u of this.users) this.lost += u.pending.splice(0).length
    clearInterval(this.renderer)
    this.render(true)
    this.finished = true
    const elapsedS = (Date.now() - this.startedAt) / 1000
    const summary: SimulatorSummary = { users: this.users.length, sent: this.sent, errors: this.errors, lost: this.lost, elapsedS, rate: elapsedS > 0 ? this.sent / elapsedS : 0 }
    if (this.fatal !== undefined) summary.fatal = this.fatal
    this.resolveDone(summary)
    return summary
  }

  /** Readings per second over the last couple of seconds (since the start, at first). */
  private currentRate (now: number): number {
    this.samples.push({ t: now, sent: this.sent })
    while (this.samples.length > 2 && now - this.samples[1].t >= RATE_WINDOW_MS) this.samples.shift()
    const first = this.samples.length > 1 ? this.samples[0] : { t: this.startedAt, sent: 0 }
    return now > first.t ? (this.sent - first.sent) * 1000 / (now - first.t) : 0
  }

  private render (final: boolean): void {
    if (this.finished) return
    const now = Date.now()
    const tty = this.opts.progress.isTTY === true
    if (final) {
      if (tty) this.write(this.clearLine())
      return
    }
    const secs = Math.floor((now - this.startedAt) / 1000)
    const clock = `${String(Math.floor(secs / 60)).padStart(2, '0')}:${String(secs % 60).padStart(2, '0')}`
    const line = `simulating ${this.users.length} users · sent ${this.sent} · errors ${this.errors} · ${this.currentRate(now).toFixed(1)} readings/s · ${clock}`
    this.write(tty ? `\r${line}\x1b[K` : line + '\n')
  }

  private clearLine (): string {
    return this.opts.progress.isTTY === true ? '\r\x1b[K' : ''
  }

  private write (text: string): void {
    this.opts.progress.write(text)
  }
}

export function summaryLine (s: SimulatorSummary): string {
  const lost = s.lost > 0 ? ` (${s.lost} readings not accepted)` : ''
  return `sent ${s.sent} readings for ${s.users} users in ${s.elapsedS.toFixed(1)} s (${s.rate.toFixed(1)} readings/s), ${s.errors} errors${lost}`
}

export async function simulateCommand (args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    users: { type: 'string' },
    rate: { type: 'string' },
    url: { type: 'string' },
    key: { type: 'string' },
    duration: { type: 'string' },
    prefix: { type: 'string' }
  })
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"; see heart-gateway help`)
  const users = positiveInteger('--users', values.users, 1)
  const prefix = values.prefix ?? 'sim-'
  if (!isUserId(`${prefix}${users}`)) throw new UsageError('--prefix must make user ids of 1-64 characters of A-Z a-z 0-9 _ -')
  const opts: SimulatorOptions = {
    users,
    rate: positiveNumber('--rate', values.rate, users),
    url: baseUrl(values.url ?? DEFAULT_HTTP_URL, 'http'),
    key: apiKey(values.key),
    prefix,
    progress: process.stderr
  }
  if (values.duration !== undefined) opts.durationS = positiveNumber('--duration', values.duration, 0)

  const sim = new Simulator(opts)
  const onSignal = (): void => {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
    // A second Ctrl-C leaves at once, without waiting for requests in flight.
    process.once('SIGINT', () => process.exit(130))
    void sim.stop()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const summary = await sim.start()
  process.stdout.write(summaryLine(summary) + '\n')
  if (summary.fatal !== undefined) throw new CliError(summary.fatal)
}
