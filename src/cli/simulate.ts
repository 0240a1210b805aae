/**
 * `heart-gateway simulate`: heart-rate devices for N users sending at a given total rate, as a
 * gateway through the ingest API with a service key (`--via http`, the default) or as wearers'
 * phones, each user publishing over a socket of its own with its own token (`--via socket`), with a one-line progress display. Also run in-process by the demo. On demand,
 * the first user has one scripted episode (`--episode high|low`) and/or one dropout (`--dropout D`).
 */
import { isUserId } from '../heart/reading.js'
import { CliError, DEFAULT_HTTP_URL, UsageError, baseUrl, clockTime, duration, parse, positiveInteger, positiveNumber } from './common.js'
import { EpisodeModel, HeartModel, type EpisodeKind } from './heart-model.js'
import { BATCH_MAX } from '../heart/batch.js'
import { IngestError, apiKey, postReadings, type Reading } from './ingest.js'
import { HeartClient, wsWx, type PublishResult } from './heart-client.js'
import { jwtSecret, signToken } from './token.js'

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
/** A scripted episode or dropout starts after this much normal data, so a watcher sees the user normal first. */
const SCRIPT_LEAD_MS = 3000
const EPISODE_DEFAULT_MS = 30_000

export interface SimulatorOptions {
  users: number
  /** Readings per second, all users together. */
  rate: number
  /** HTTP base URL of the service. */
  url: string
  key: string
  /** `socket`: each user publishes over its own socket, with a token from `tokenFor`. */
  via?: 'http' | 'socket'
  tokenFor?: (userId: string) => string
  /** User ids are `<prefix>1` … `<prefix>N`. */
  prefix: string
  durationS?: number
  /** Where the progress line and error messages go. */
  progress: NodeJS.WritableStream & { isTTY?: boolean }
  /** The first user's readings cross a limit once, for `ms`, SCRIPT_LEAD_MS after the start. */
  episode?: { kind: EpisodeKind, ms: number }
  /** The first user sends nothing for this long once (SCRIPT_LEAD_MS after the episode, or the start), so it goes offline and comes back. */
  dropoutMs?: number
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

type Phase = 'normal' | 'episode' | 'dropout'

/** The scripted user's episode and dropout, in epoch ms from start(). */
interface Script {
  episode?: { model: EpisodeModel, kind: EpisodeKind, from: number, to: number }
  dropout?: { from: number, to: number }
  phase: Phase
}

interface SimUser {
  id: string
  model: HeartModel
  script?: Script
  /** When its next reading is due (epoch ms, fractional). */
  due: number
  pending: Reading[]
  inFlight: boolean
  /** Its phone's socket, with --via socket. */
  client?: InstanceType<typeof HeartClient>
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
    const scripted = opts.episode !== undefined || opts.dropoutMs !== undefined
    this.users = this.userIds.map((id, i) => ({ id, model: new HeartModel(Math.random, !(scripted && i === 0)), due: 0, pending: [], inFlight: false }))
    this.intervalMs = 1000 * opts.users / opts.rate
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
  }

  start (): Promise<SimulatorSummary> {
    this.startedAt = Date.now()
    if (this.opts.durationS !== undefined) this.endAt = this.startedAt + this.opts.durationS * 1000
    this.planScript()
    // Staggered, so the users' requests spread over each interval instead of arriving together.
    this.users.forEach((u, i) => { u.due = this.startedAt + i * this.intervalMs / this.users.length })
    if (this.opts.via === 'socket') {
      const url = `${this.opts.url.replace(/^http/, 'ws')}/heart/current`
      for (const u of this.users) {
        u.client = new HeartClient({ url, token: this.opts.tokenFor!(u.id), wx: wsWx, onError: (err) => this.report(err.message) })
        u.client.connect()
      }
    }
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

  private planScript (): void {
    const { episode, dropoutMs } = this.opts
    if (episode === undefined && dropoutMs === undefined) return
    const script: Script = { phase: 'normal' }
    let from = this.startedAt + SCRIPT_LEAD_MS
    if (episode !== undefined) {
      script.episode = { model: new EpisodeModel(episode.kind), kind: episode.kind, from, to: from + episode.ms }
      from = script.episode.to + SCRIPT_LEAD_MS
    }
    if (dropoutMs !== undefined) script.dropout = { from, to: from + dropoutMs }
    this.users[0].script = script
  }

  private generate (u: SimUser, now: number): void {
    if (now - u.due > MAX_LAG_MS) u.due = now
    while (u.due <= now && u.due < this.endAt) {
      const ts = Math.round(u.due)
      // The normal model runs on through an episode or a dropout, so the trace resumes smoothly.
      const bpm = u.model.next(u.due)
      const sent = u.script === undefined ? bpm : this.scripted(u, u.script, ts, bpm)
      if (sent !== null) u.pending.push({ bpm: sent, ts })
      u.due += this.intervalMs
    }
  }

  /** The scripted user's reading at `ts` (null: none, a dropout); a change of phase is announced on the progress stream. */
  private scripted (u: SimUser, script: Script, ts: number, normal: number): number | null {
    const { episode, dropout } = script
    let phase: Phase = 'normal'
    let bpm: number | null = normal
    if (episode !== undefined && ts >= episode.from && ts < episode.to) {
      phase = 'episode'
      bpm = episode.model.next(ts)
    } else if (dropout !== undefined && ts >= dropout.from && ts < dropout.to) {
      phase = 'dropout'
      bpm = null
    }
    if (phase !== script.phase) {
      const seconds = (ms: number): string => `${Number((ms / 1000).toFixed(1))} s`
      if (episode !== undefined && phase === 'episode') {
        this.announce(`${u.id}: ${episode.kind} episode from ${clockTime(ts)}, readings around ${episode.kind === 'high' ? 150 : 38} bpm for ${seconds(episode.to - episode.from)}`)
      } else if (dropout !== undefined && phase === 'dropout') {
        this.announce(`${u.id}: dropout from ${clockTime(ts)}, no readings for ${seconds(dropout.to - dropout.from)}`)
      } else {
        this.announce(`${u.id}: ${script.phase === 'episode' ? 'episode over' : 'readings again'} at ${clockTime(ts)}, back to normal`)
      }
      script.phase = phase
    }
    return bpm
  }

  private send (u: SimUser): void {
    const batch = u.pending.splice(0, BATCH_MAX)
    u.inFlight = true
    const sending = u.client === undefined
      ? postReadings(this.opts.url, this.opts.key, u.id, batch).then((answer) => answer.accepted)
      : u.client.publish(batch).then((answer: PublishResult) => answer.ids.length - answer.duplicates)
    const request = sending.then((accepted: number) => {
      this.sent += accepted
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
    this.announce(message)
  }

  private announce (message: string): void {
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
    for (const u of this.users) u.client?.close()
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
    prefix: { type: 'string' },
    episode: { type: 'string' },
    'episode-for': { type: 'string' },
    dropout: { type: 'string' },
    via: { type: 'string' }
  })
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"; see heart-gateway help`)
  const users = positiveInteger('--users', values.users, 1)
  const prefix = values.prefix ?? 'sim-'
  if (!isUserId(`${prefix}${users}`)) throw new UsageError('--prefix must make user ids of 1-64 characters of A-Z a-z 0-9 _ -')
  const via = values.via ?? 'http'
  if (via !== 'http' && via !== 'socket') throw new UsageError(`--via must be http or socket, not "${via}"`)
  const secret = via === 'socket' ? await jwtSecret() : ''
  const opts: SimulatorOptions = {
    users,
    rate: positiveNumber('--rate', values.rate, users),
    url: baseUrl(values.url ?? DEFAULT_HTTP_URL, 'http'),
    // Wearers' phones hold their own tokens, not a service key.
    key: via === 'socket' ? '' : apiKey(values.key),
    via,
    tokenFor: (userId) => signToken(secret, userId),
    prefix,
    progress: process.stderr
  }
  if (values.duration !== undefined) opts.durationS = positiveNumber('--duration', values.duration, 0)
  if (values.episode !== undefined) {
    if (values.episode !== 'high' && values.episode !== 'low') throw new UsageError(`--episode must be high or low, not "${values.episode}"`)
    opts.episode = { kind: values.episode, ms: values['episode-for'] === undefined ? EPISODE_DEFAULT_MS : duration('--episode-for', values['episode-for']) }
  } else if (values['episode-for'] !== undefined) {
    throw new UsageError('--episode-for needs --episode high or --episode low')
  }
  if (values.dropout !== undefined) opts.dropoutMs = duration('--dropout', values.dropout)

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
