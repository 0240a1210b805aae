import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createSigner } from 'fast-jwt'
import tap, { type Test as TapTest } from 'tap'
import type tls from 'node:tls'
import { WebSocket } from 'ws'
import app, { type AppOptions } from '../src/app.js'
import type { Env } from '../plugins/config.js'
import { loggerOptions } from '../src/logger.js'
import { RedisServer, freePort } from './redis-server.js'
import type { Watcher } from '../src/heart/hub.js'

export { RedisServer, freePort }

/** A test or subtest (`typeof tap` is the root only, which subtests are not assignable to). */
type Test = TapTest

export const TEST_SECRET = 'test-secret-of-at-least-32-characters-0123'
export const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** Signs a token the test app accepts (or, with other options, one it must refuse). */
export function token (userId: string, opts: { ttlS?: number, secret?: string, claims?: Record<string, unknown> } = {}): string {
  const sign = createSigner({ key: opts.secret ?? TEST_SECRET, algorithm: 'HS256', expiresIn: (opts.ttlS ?? 3600) * 1000 })
  return sign({ sub: userId, ...opts.claims })
}

export function bearer (userId: string): { authorization: string } {
  return { authorization: `Bearer ${token(userId)}` }
}

let shared: Promise<RedisServer> | null = null

/**
 * The test file's private redis-server, started on first use and stopped when the file's tests end.
 * Tests that stop Redis start their own with RedisServer.start() instead.
 */
export async function sharedRedis (): Promise<RedisServer> {
  if (shared === null) {
    shared = RedisServer.start()
    const server = await shared
    tap.teardown(() => server.stop())
  }
  return await shared
}

let prefixes = 0
/** A key prefix of its own for each app, so tests sharing a Redis never see each other's keys. */
export function uniquePrefix (): string {
  return `t${process.pid}x${++prefixes}:`
}

export interface BuildOptions {
  /** Receives every log line, as JSON text. */
  logs?: string[]
  /** Where the app keeps its generated development JWT secret (config's `devSecretFile`). */
  devSecretFile?: string
}

/**
 * Test settings: quiet, a known secret, and limits out of the way of tests that send many frames
 * or open many sockets from one address (the tests of those limits set them).
 */
export function testEnv (env: Env = {}): Env {
  return {
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    JWT_SECRET: TEST_SECRET,
    MESSAGE_RATE_LIMIT: '100000',
    UPGRADE_RATE_LIMIT: '100000',
    MAX_CONNECTIONS_PER_USER: '1000',
    // The embedded store by choice where no Redis is given, as production now requires.
    ...(env.REDIS_URL ?? env.REDIS_SENTINELS ?? env.REDIS_CLUSTER_NODES) === undefined ? { STORE: 'memory' } : {},
    ...env
  }
}

/** Builds the app as tests use it: not listening, closed when the test ends. */
export async function build (t: Test, env: Env = {}, opts: BuildOptions = {}): Promise<FastifyInstance> {
  const logs = opts.logs
  const fastify = Fastify({
    logger: logs === undefined
      ? false
      : { ...(loggerOptions('trace') as object), stream: new Writable({ write (chunk, _enc, cb) { logs.push(String(chunk)); cb() } }) } as never
  })
  // Registered before ready(): a test failing during start-up must not leave Redis connections open.
  t.teardown(() => fastify.close())
  const appOpts: AppOptions = { env: testEnv({ LOG_LEVEL: logs === undefined ? 'silent' : 'trace', ...env }) }
  if (opts.devSecretFile !== undefined) appOpts.devSecretFile = opts.devSecretFile
  await fastify.register(fp(app), appOpts)
  await fastify.ready()
  return fastify
}

/** Builds the app on the file's shared Redis with a prefix of its own. */
export async function buildWithRedis (t: Test, env: Env = {}, opts: BuildOptions = {}): Promise<FastifyInstance> {
  const redis = await sharedRedis()
  return await build(t, { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), ...env }, opts)
}

export interface FramesOptions {
  /** Keep `status` frames (test/status.test.ts); others skip them, as users start offline and every first reading brings one. */
  withStatus?: boolean
}

const STATUS_FRAME_HEAD = '{"type":"status"'

/** Reads frames from a client socket in order. Attach it before sending anything. */
export class Frames {
  private readonly queue: string[] = []
  private waiters: Array<() => void> = []
  closeCode: number | null = null
  readonly closed: Promise<number>

  constructor (readonly ws: WebSocket, opts: FramesOptions = {}) {
    const withStatus = opts.withStatus === true
    ws.on('message', (data) => {
      const text = String(data)
      if (!withStatus && text.startsWith(STATUS_FRAME_HEAD)) return
      this.queue.push(text)
      this.wake()
    })
    this.closed = new Promise((resolve) => ws.once('close', (code) => {
      this.closeCode = code
      this.wake()
      resolve(code)
    }))
  }

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }

  get pending (): number {
    return this.queue.length
  }

  /** The next frame as text; rejects after `ms` or when the socket closes first. */
  async next (ms = 3000): Promise<string> {
    const deadline = Date.now() + ms
    while (this.queue.length === 0) {
      if (this.closeCode !== null) throw new Error(`socket closed (${this.closeCode}) while waiting for a frame`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no frame within ${ms} ms`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    return this.queue.shift() as string
  }

  async json (ms?: number): Promise<any> {
    return JSON.parse(await this.next(ms))
  }

  /** Skips frames until one matches; returns it. */
  async until (match: (frame: any) => boolean, ms = 3000): Promise<any> {
    const deadline = Date.now() + ms
    for (;;) {
      const frame = await this.json(Math.max(1, deadline - Date.now()))
      if (match(frame)) return frame
    }
  }

  /** Sends a frame (objects as JSON) and returns the next one. */
  async ask (frame: unknown, ms?: number): Promise<any> {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
    return await this.json(ms)
  }

  /**
   * Waits `ms`, then fails (naming `what`) if any frame is unread: one that arrived meanwhile, or
   * one left over from before.
   */
  async quiet (ms: number, what: string): Promise<void> {
    await sleep(ms)
    const got = this.drain()
    if (got.length > 0) throw new Error(`${what}: expected no frame, got ${got.length}: ${got.slice(0, 3).join(' ')}`)
  }

  /** Removes and returns every frame received but not yet read, without waiting. */
  drain (): string[] {
    return this.queue.splice(0)
  }
}

/** Opens /heart/current on an in-process app as `userId`. */
export async function openSocket (fastify: FastifyInstance, userId: string, opts: FramesOptions = {}): Promise<Frames> {
  const ws = await fastify.injectWS('/heart/current', { headers: bearer(userId) })
  return new Frames(ws, opts)
}

export interface ServerProcess {
  port: number
  url: string
  proc: ChildProcess
  logs: string[]
  exitCode: Promise<number | null>
  stop (signal?: NodeJS.Signals): Promise<number | null>
}

/**
 * Runs the compiled server (dist/, as production does) with the given settings and waits until it
 * listens. `env.PORT` picks the port (to start a replacement where a stopped one listened).
 */
export async function startServer (t: Test, env: Env = {}): Promise<ServerProcess> {
  const port = env.PORT === undefined ? await freePort() : Number(env.PORT)
  const proc = spawn(process.execPath, ['dist/src/server.js'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...testEnv({ LOG_LEVEL: 'info', HOST: '127.0.0.1', PORT: String(port), SHUTDOWN_GRACE_MS: '200', ...env }) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const logs: string[] = []
  let listening: () => void
  const ready = new Promise<void>((resolve) => { listening = resolve })
  let buffered = ''
  const onData = (chunk: Buffer): void => {
    buffered += String(chunk)
    let nl
    while ((nl = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      logs.push(line)
      if (line.includes('Server listening')) listening()
    }
  }
  proc.stdout?.on('data', onData)
  proc.stderr?.on('data', onData)
  // 'close', not 'exit': it comes after the last output has been read.
  const exitCode = once(proc, 'close').then(([code]) => code as number | null)
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await exitCode
    }
  })
  const started = await Promise.race([ready.then(() => true), exitCode.then(() => false), new Promise((resolve) => setTimeout(() => resolve(false), 15000))])
  if (started !== true) {
    // Also here, not only in the teardown: a start-up failure at a file's top level ends the test
    // process before teardowns run, which would leave the server running.
    proc.kill('SIGKILL')
    throw new Error(`server did not start:\n${logs.join('\n')}`)
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    logs,
    exitCode,
    async stop (signal = 'SIGTERM') {
      proc.kill(signal)
      return await exitCode
    }
  }
}

export async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Polls `check` until it returns true or `ms` passes; returns whether it did. A check still
 * throwing when time runs out rethrows its last error, so a real failure is not reported as a
 * bare timeout.
 */
export async function eventually (check: () => boolean | Promise<boolean>, ms = 5000, every = 25): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    let failed: { err: unknown } | null = null
    try {
      if (await check()) return true
    } catch (err) {
      failed = { err }
    }
    if (Date.now() > deadline) {
      if (failed === null) return false
      const message = failed.err instanceof Error ? failed.err.message : String(failed.err)
      throw new Error(`still failing after ${ms} ms: ${message}`, { cause: failed.err })
    }
    await sleep(every)
  }
}

/** Resolves as `promise` does, or rejects naming `what` when nothing came within `ms`. */
export async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms) })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** An upgrade answered with an HTTP status instead of 101. */
export class Refused extends Error {
  constructor (readonly status: number, readonly body: string, readonly headers: Record<string, unknown> = {}) {
    super(`upgrade refused with ${status}: ${body.slice(0, 200)}`)
  }
}

export interface WsOptions extends FramesOptions {
  headers?: Record<string, string>
  query?: string
  tls?: tls.ConnectionOptions
  /** The loopback address to connect from (127.0.0.2 is another client than 127.0.0.1). */
  localAddress?: string
  /** Default 5 s; a storm of thousands of handshakes on a busy machine needs longer. */
  handshakeTimeoutMs?: number
}

const HANDSHAKE_TIMEOUT_MS = 5000

/**
 * Opens a real WebSocket and resolves once it is open; rejects with Refused when the server
 * answers the handshake with an HTTP status instead. The socket is terminated when `tt` ends.
 */
export async function openWebSocket (tt: { teardown: (fn: () => void) => void }, url: string, opts: WsOptions = {}): Promise<Frames> {
  const ws = new WebSocket(url + (opts.query ?? ''), { headers: opts.headers, handshakeTimeout: opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS, localAddress: opts.localAddress, ...opts.tls })
  tt.teardown(() => ws.terminate())
  const frames = new Frames(ws, opts)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
    ws.once('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => {
        req.destroy()
        reject(new Refused(res.statusCode ?? 0, body, res.headers))
      })
    })
  })
  return frames
}

/** POSTs one reading to a server process; status 0 when the request failed outright. */
export async function postReading (server: ServerProcess, key: string, userId: string, bpm: number, ms = 5000): Promise<{ status: number, id?: string }> {
  try {
    const res = await fetch(`${server.url}/heart/${userId}/readings`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json' },
      body: JSON.stringify({ bpm }),
      signal: AbortSignal.timeout(ms)
    })
    const body = await res.json() as { ids?: string[] }
    return { status: res.status, id: body.ids?.[0] }
  } catch {
    return { status: 0 }
  }
}

/** A hub watcher that records the frames it is sent, in order (hub tests). */
export function recorder (userId: string): Watcher & { frames: string[], bpms: () => number[] } {
  const frames: string[] = []
  return {
    userId,
    frames,
    push (_owner, frame) { frames.push(frame.toString()) },
    send (frame) { frames.push(frame) },
    revoked (ownerId) { frames.push(`revoked:${ownerId}`) },
    notify (_owner, frame) { frames.push(frame.toString()) },
    bpms: () => frames.filter((f) => f.startsWith('{')).map((f) => JSON.parse(f).bpm)
  }
}

/** The two stores, for tests that run once on each. */
export const builders = [
  { store: 'the embedded store', build },
  { store: 'Redis', build: buildWithRedis }
] as const
