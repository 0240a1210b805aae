import { parseArgs, type ParseArgsConfig } from 'node:util'

/** A failure the CLI reports as one line on stderr, without a stack trace. */
export class CliError extends Error {
  constructor (message: string, readonly exitCode = 1) {
    super(message)
  }
}

/** Wrong arguments: exit code 2, as most command-line tools do. */
export class UsageError extends CliError {
  constructor (message: string) {
    super(message, 2)
  }
}

export const DEFAULT_HTTP_URL = 'http://127.0.0.1:3000'
export const DEFAULT_WS_URL = 'ws://127.0.0.1:3000'

type Options = NonNullable<ParseArgsConfig['options']>

/** parseArgs, strict, with its errors turned into usage errors. */
export function parse<O extends Options> (args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

export function positiveInteger (name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (value.trim() === '' || !Number.isInteger(n) || n <= 0) throw new UsageError(`${name} must be a positive integer, not "${value}"`)
  return n
}

export function positiveNumber (name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new UsageError(`${name} must be a positive number, not "${value}"`)
  return n
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m)?$/
const UNIT_MS = { ms: 1, s: 1000, m: 60_000 }

/** A positive duration in milliseconds from `20s`, `1.5m`, `500ms` or `20` (seconds). */
export function duration (name: string, value: string): number {
  const m = DURATION.exec(value.trim())
  const ms = m === null ? NaN : Number(m[1]) * UNIT_MS[(m[2] ?? 's') as keyof typeof UNIT_MS]
  if (!(ms > 0)) throw new UsageError(`${name} must be a duration like 20s, 1.5m or 500ms, not "${value}"`)
  return ms
}

/** A base URL without trailing slashes; the scheme is moved to the one asked for (http ↔ ws), so either form is accepted. */
export function baseUrl (value: string, kind: 'http' | 'ws'): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UsageError(`--url must be a URL like ${kind === 'http' ? DEFAULT_HTTP_URL : DEFAULT_WS_URL}, not "${value}"`)
  }
  const secure = url.protocol === 'https:' || url.protocol === 'wss:'
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) throw new UsageError(`--url must be http(s):// or ws(s)://, not "${value}"`)
  const scheme = kind === 'http' ? (secure ? 'https:' : 'http:') : (secure ? 'wss:' : 'ws:')
  return `${scheme}//${url.host}${url.pathname.replace(/\/+$/, '')}`
}

/** What went wrong with a request that got no answer, e.g. `cannot reach http://127.0.0.1:3000: ECONNREFUSED`. */
export function networkMessage (url: string, err: unknown): string {
  const e = err as Error & { cause?: { code?: string, message?: string } }
  if (e.name === 'TimeoutError') return `no answer from ${url} in time`
  const detail = e.cause?.code ?? e.cause?.message ?? e.message
  return `cannot reach ${url}: ${detail}`
}

/** The server's JSON error (`{statusCode, error, message}`) as one line; raw text when the body is not that. */
export function serverMessage (status: number, text: string): string {
  try {
    const body = JSON.parse(text) as { error?: unknown, message?: unknown }
    if (typeof body.message === 'string') return `${status}${typeof body.error === 'string' ? ' ' + body.error : ''}: ${body.message}`
  } catch {}
  const snippet = text.trim().slice(0, 200)
  return snippet === '' ? `HTTP ${status}` : `HTTP ${status}: ${snippet}`
}

/** `HH:MM:SS.mmm` in local time. */
export function clockTime (ms: number): string {
  const d = new Date(ms)
  const p = (n: number, w = 2): string => String(n).padStart(w, '0')
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`
}
