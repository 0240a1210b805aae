/** Types of bench/sweep.mjs, for test/bench-sweep.test.ts. */
export interface Percentiles { n?: number, p50: number | null, p99: number | null, max?: number | null, mean?: number | null }
export interface SweepStep {
  rate: number
  error?: string
  readingsPerSecond?: number
  deliveredPerSecond?: number
  latencyMs?: Percentiles
  lost?: number
  duplicates?: number
  ingestErrors?: number
  serverCpuPerDeliveryUs?: number
  cpu?: { serverCpuPercent: number, generatorCpuPercent: number }
  [more: string]: unknown
}
export interface Sweep {
  rates?: number[]
  subscribers?: number
  thresholdMs?: number
  note?: string
  targets: Record<string, SweepStep[]>
}
export interface Knee { rate: number | null, atTop: boolean, firstFailure: { rate: number, why: string[] } | null }
export const THRESHOLD_MS: number
export const MIN_ACHIEVED: number
export function failures (step: SweepStep, thresholdMs?: number): string[]
export function knee (steps: SweepStep[], thresholdMs?: number): Knee
export function knees (sweep: Sweep): { targets: Record<string, Knee>, oursReachesBaseline: boolean | null }
export function sweepTable (sweep: Sweep): string
export function sweepSvg (sweep: Sweep, options?: { title?: string, width?: number, height?: number }): string
