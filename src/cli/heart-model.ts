import { BPM_MAX, BPM_MIN } from '../heart/reading.js'

/*
 * One person's heart rate over time, as a wearable reports it: a resting baseline that wanders
 * slowly, exercise bouts that ramp up over tens of seconds and recover more slowly, and a little
 * beat-to-beat variability. Every part is updated for the real time between two samples, so the
 * trace looks the same at 1 Hz or 50 Hz, and consecutive readings never jump.
 */
const REST_MIN = 55
const REST_MAX = 85
/** Baseline drift: a few bpm over ten minutes. */
const BASELINE_SD = 3
const BASELINE_TAU_S = 600
/** Beat-to-beat variability. */
const NOISE_SD = 1.5
const NOISE_TAU_S = 4
/** A bout starts on average this long into a rest, and never sooner than REST_AFTER_BOUT_S after one. */
const MEAN_REST_S = 150
const REST_AFTER_BOUT_S = 60
const BOUT_MIN_S = 40
const BOUT_MAX_S = 240
const PEAK_MIN = 110
const PEAK_MAX = 160
/** Heart rate follows effort with these lags, and never faster than these slopes (bpm/s). */
const RAMP_UP_TAU_S = 25
const RECOVERY_TAU_S = 45
const MAX_RISE_PER_S = 2.5
const MAX_FALL_PER_S = 2
/** Gaps longer than this (a paused simulator) are treated as this long. */
const MAX_STEP_S = 60

export type Random = () => number

function gaussian (random: Random): number {
  // Box–Muller; 1 - random() is in (0, 1], so the log is finite.
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
}

function between (random: Random, min: number, max: number): number {
  return min + (max - min) * random()
}

/** An Ornstein–Uhlenbeck step: exact for any dt, so the spread does not depend on the sampling rate. */
function ouStep (x: number, mean: number, sd: number, tau: number, dt: number, random: Random): number {
  const decay = Math.exp(-dt / tau)
  return mean + (x - mean) * decay + sd * Math.sqrt(1 - decay * decay) * gaussian(random)
}

export class HeartModel {
  /** This person's usual resting rate; the baseline wanders around it. */
  private readonly restingMean: number
  private baseline: number
  /** bpm above the baseline due to exercise, and where it is heading. */
  private effort = 0
  private peak: number | null = null
  /** Seconds left in the current bout, or of the minimum rest after one. */
  private phaseLeft = 0
  private noise = 0
  private lastMs: number | null = null

  /** `exercise: false` keeps this person at rest (the user of a scripted episode, whose own bouts would blur it). */
  constructor (private readonly random: Random = Math.random, private readonly exercise = true) {
    this.restingMean = between(random, REST_MIN + 3, REST_MAX - 3)
    this.baseline = this.restingMean
  }

  get exercising (): boolean {
    return this.peak !== null
  }

  /** The reading at `ms` (epoch milliseconds, not before the previous call): an integer within BPM_MIN–BPM_MAX. */
  next (ms: number): number {
    const dt = this.lastMs === null ? 0 : Math.min(MAX_STEP_S, Math.max(0, (ms - this.lastMs) / 1000))
    this.lastMs = ms
    if (dt > 0) this.step(dt)
    const bpm = Math.round(this.baseline + this.effort + this.noise)
    return Math.min(BPM_MAX, Math.max(BPM_MIN, bpm))
  }

  private step (dt: number): void {
    const r = this.random
    this.baseline = Math.min(REST_MAX, Math.max(REST_MIN, ouStep(this.baseline, this.restingMean, BASELINE_SD, BASELINE_TAU_S, dt, r)))
    this.noise = ouStep(this.noise, 0, NOISE_SD, NOISE_TAU_S, dt, r)

    this.phaseLeft -= dt
    if (this.peak !== null) {
      if (this.phaseLeft <= 0) {
        this.peak = null
        this.phaseLeft = REST_AFTER_BOUT_S
      }
    } else if (this.exercise && this.phaseLeft <= 0 && r() < 1 - Math.exp(-dt / MEAN_REST_S)) {
      this.peak = between(r, PEAK_MIN, PEAK_MAX)
      this.phaseLeft = between(r, BOUT_MIN_S, BOUT_MAX_S)
    }

    const target = this.peak === null ? 0 : Math.max(0, this.peak - this.baseline)
    const rising = target > this.effort
    const lag = 1 - Math.exp(-dt / (rising ? RAMP_UP_TAU_S : RECOVERY_TAU_S))
    const limit = (rising ? MAX_RISE_PER_S : MAX_FALL_PER_S) * dt
    const change = (target - this.effort) * lag
    this.effort += Math.max(-limit, Math.min(limit, change))
  }
}

export type EpisodeKind = 'high' | 'low'

/**
 * An abnormal rhythm for `simulate --episode`: around 150 bpm (high) or 38 (low), well clear of
 * the usual limits (120 and 45) and of their 5 bpm hysteresis, so an alert on them opens at the
 * first such reading and closes at the first normal one. It starts and stops abruptly, as an
 * arrhythmia does, with the same beat-to-beat wander as a normal trace.
 */
const EPISODE_LEVEL: Record<EpisodeKind, { mean: number, min: number, max: number }> = {
  high: { mean: 150, min: 140, max: 160 },
  low: { mean: 38, min: 34, max: 42 }
}
const EPISODE_SD = 3

export class EpisodeModel {
  private noise = 0
  private lastMs: number | null = null

  constructor (private readonly kind: EpisodeKind, private readonly random: Random = Math.random) {}

  next (ms: number): number {
    const dt = this.lastMs === null ? 0 : Math.min(MAX_STEP_S, Math.max(0, (ms - this.lastMs) / 1000))
    this.lastMs = ms
    if (dt > 0) this.noise = ouStep(this.noise, 0, EPISODE_SD, NOISE_TAU_S, dt, this.random)
    const level = EPISODE_LEVEL[this.kind]
    return Math.min(level.max, Math.max(level.min, Math.round(level.mean + this.noise)))
  }
}
