import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { CLIENT_FRAME_TYPES, ERROR_CODES, type ErrorCode } from './heart/protocol.js'

/** Frame types counted in and out; `legacy` is the original protocol's text frame. */
export type FrameInType = typeof CLIENT_FRAME_TYPES[number] | 'legacy' | 'invalid'
export type FrameOutType = 'reading' | 'reply' | 'error'

/**
 * What the service reports to Prometheus, one registry per app instance (tests build several).
 * Hot paths call pre-bound children, so counting a frame is an increment, not a label lookup.
 */
export class Metrics {
  readonly registry = new Registry()
  private readonly framesIn = new Map<string, Counter.Internal>()
  private readonly framesOut = new Map<string, Counter.Internal>()
  private readonly errors = new Map<string, Counter.Internal>()
  private readonly pushLatency: Histogram
  readonly ingestAccepted: Counter
  readonly ingestRejected: Counter<'status'>
  readonly storeErrors: Counter

  constructor () {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'heart_' })
    const framesIn = new Counter({ name: 'heart_frames_in_total', help: 'WebSocket frames received, by type', labelNames: ['type'], registers })
    for (const type of [...CLIENT_FRAME_TYPES, 'legacy', 'invalid']) this.framesIn.set(type, framesIn.labels(type))
    const framesOut = new Counter({ name: 'heart_frames_out_total', help: 'WebSocket frames sent, by kind: reading (push), reply, error', labelNames: ['type'], registers })
    for (const type of ['reading', 'reply', 'error']) this.framesOut.set(type, framesOut.labels(type))
    const errors = new Counter({ name: 'heart_errors_total', help: 'Error frames sent, by code', labelNames: ['code'], registers })
    for (const code of ERROR_CODES) this.errors.set(code, errors.labels(code))
    this.pushLatency = new Histogram({
      name: 'heart_push_latency_seconds',
      help: 'From ingest (the history id\'s Redis time) to the reading frame being sent by this instance',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers
    })
    this.ingestAccepted = new Counter({ name: 'heart_ingest_accepted_total', help: 'Readings accepted by ingest', registers })
    this.ingestRejected = new Counter({ name: 'heart_ingest_rejected_total', help: 'Ingest requests refused, by HTTP status', labelNames: ['status'], registers })
    this.storeErrors = new Counter({ name: 'heart_store_errors_total', help: 'Store (Redis) commands that failed or timed out', registers })
  }

  frameIn (type: FrameInType): void {
    this.framesIn.get(type)?.inc()
  }

  frameOut (type: FrameOutType, n = 1): void {
    this.framesOut.get(type)?.inc(n)
  }

  error (code: ErrorCode): void {
    this.errors.get(code)?.inc()
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
