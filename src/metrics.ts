import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { CLIENT_FRAME_TYPES, ERROR_CODES, type ErrorCode } from './heart/protocol.js'

/** Frame types counted in and out; `legacy` is the original protocol's text frame. */
export type FrameInType = typeof CLIENT_FRAME_TYPES[number] | 'legacy' | 'invalid'
export type FrameOutType = 'reading' | 'status' | 'reply' | 'error'

/**
 * A labelled counter counted in plain numbers on the hot path and handed to prom-client only
 * when Prometheus scrapes (prom-client's own inc costs about 1.5 % of a busy instance's CPU).
 */
function tally<L extends string> (registry: Registry, name: string, help: string, label: string, values: readonly L[]): Record<L, number> {
  const counts = Object.fromEntries(values.map((v) => [v, 0])) as Record<L, number>
  new Counter({ // eslint-disable-line no-new
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect () {
      this.reset()
      for (const v of values) this.labels(v).inc(counts[v])
    }
  })
  return counts
}

/**
 * What the service reports to Prometheus, one registry per app instance (tests build several).
 * Frame counters are plain increments; the histogram is observed once per reading per instance.
 */
export class Metrics {
  readonly registry = new Registry()
  private readonly framesIn: Record<FrameInType, number>
  private readonly framesOut: Record<FrameOutType, number>
  private readonly errors: Record<ErrorCode, number>
  private readonly pushLatency: Histogram
  private readonly ingestAccepted: Counter
  private readonly ingestDuplicates: Counter
  readonly ingestRejected: Counter<'status'>
  readonly storeErrors: Counter

  constructor () {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'heart_' })
    this.framesIn = tally(this.registry, 'heart_frames_in_total', 'WebSocket frames received, by type', 'type', [...CLIENT_FRAME_TYPES, 'legacy', 'invalid'])
    this.framesOut = tally(this.registry, 'heart_frames_out_total', 'WebSocket frames sent, by kind: reading (push), status, reply, error', 'type', ['reading', 'status', 'reply', 'error'])
    this.errors = tally(this.registry, 'heart_errors_total', 'Error frames sent, by code', 'code', ERROR_CODES)
    this.pushLatency = new Histogram({
      name: 'heart_push_latency_seconds',
      help: 'From ingest (the history id\'s Redis time) to the reading frame being sent by this instance',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers
    })
    this.ingestAccepted = new Counter({ name: 'heart_ingest_accepted_total', help: 'Readings accepted by ingest', registers })
    this.ingestDuplicates = new Counter({ name: 'heart_ingest_duplicates_total', help: 'Readings ingest did not store again: their ts was already in history (resends)', registers })
    this.ingestRejected = new Counter({ name: 'heart_ingest_rejected_total', help: 'Ingest requests refused, by HTTP status', labelNames: ['status'], registers })
    this.storeErrors = new Counter({ name: 'heart_store_errors_total', help: 'Store (Redis) commands that failed or timed out', registers })
  }

  frameIn (type: FrameInType): void {
    this.framesIn[type]++
  }

  frameOut (type: FrameOutType, n = 1): void {
    this.framesOut[type] += n
  }

  /** Readings written by any way in (HTTP ingest, `publish`): `sent` of them, `duplicates` of which were resends. */
  ingested (sent: number, duplicates: number): void {
    this.ingestAccepted.inc(sent - duplicates)
    this.ingestDuplicates.inc(duplicates)
  }

  error (code: ErrorCode): void {
    this.errors[code]++
  }

  /** `id` is a history id: its milliseconds are Redis's clock at ingest. */
  pushed (id: string): void {
    const ms = Date.now() - Number(id.slice(0, id.indexOf('-')))
    if (ms >= 0) this.pushLatency.observe(ms / 1000)
  }

  /** Gauges read when Prometheus scrapes. */
  gauge (name: string, help: string, read: () => number): void {
    new Gauge({ name, help, registers: [this.registry], collect () { this.set(read()) } }) // eslint-disable-line no-new
  }
}
