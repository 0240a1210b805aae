/**
 * `heart-gateway demo` (`npm run demo`): the compiled service on the embedded store as a child
 * process, a simulator for a few users in this process, and what to open: the demo page's URL
 * and a development token. Ctrl-C stops both.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { DEV_SECRET_FILE, loadDevSecret } from '../dev-secret.js'
import { CliError, UsageError, parse, positiveInteger, positiveNumber } from './common.js'
import { Simulator, summaryLine } from './simulate.js'
import { DEFAULT_TTL_S, signToken } from './token.js'

const HOST = '127.0.0.1'
const START_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 15_000
const LOG_TAIL = 40
const DEMO_USER = 'demo-1'
/**
 * The README's CLI examples use this key, so they work against a demo as written. A fixed key is
 * no weaker than what a demo already is: it listens on loopback only, with the dev login on.
 */
export const DEMO_KEY = 'dev-key'

function portInUse (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer()
    probe.once('error', () => resolve(true))
    probe.listen(port, HOST, () => probe.close(() => resolve(false)))
  })
}

async function status (url: string): Promise<number> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) })
    await res.arrayBuffer()
    return res.status
  } catch {
    return 0
  }
}

export async function demoCommand (args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { port: { type: 'string' }, users: { type: 'string' }, rate: { type: 'string' } })
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"; see heart-gateway help`)
  const port = positiveInteger('--port', values.port, 3000)
  if (port > 65535) throw new UsageError('--port must be at most 65535')
  const users = positiveInteger('--users', values.users, 3)
  // One reading per second per user by default, as a wearable sends them.
  const rate = positiveNumber('--rate', values.rate, users)

  const serverJs = fileURLToPath(new URL('../server.js', import.meta.url))
  if (!existsSync(serverJs)) throw new CliError(`${serverJs} is missing: run npm run build first`)
  if (await portInUse(port)) throw new CliError(`port ${port} is already in use (another server or demo?): pass --port`)

  const envSecret = process.env.JWT_SECRET
  const secret = envSecret !== undefined && envSecret !== '' ? envSecret : await loadDevSecret(DEV_SECRET_FILE)
  const key = DEMO_KEY
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: 'development',
    ENABLE_DEV_LOGIN: 'true',
    INGEST_API_KEYS: key,
    JWT_SECRET: secret,
    HOST,
    PORT: String(port),
    // Nothing sits in front of a demo that needs time to move traffic away.
    SHUTDOWN_GRACE_MS: '0',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn'
  }
  // The embedded store, and tokens signed with the secret above.
  delete env.REDIS_URL
  delete env.JWT_PUBLIC_KEY

  // Its own process group: a Ctrl-C at the terminal reaches the server once, forwarded from here,
  // rather than twice (the server takes a second signal as "exit now").
  const child: ChildProcess = spawn(process.execPath, [serverJs], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  const killChild = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }
  process.on('exit', killChild)
  const tail: string[] = []
  const keep = (chunk: Buffer): void => {
    for (const line of String(chunk).split('\n')) if (line !== '') tail.push(line)
    tail.splice(0, Math.max(0, tail.length - LOG_TAIL))
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)))
  const logsOf = (): string => tail.length === 0 ? '' : `\nlast server output:\n${tail.join('\n')}`

  const url = `http://${HOST}:${port}`
  const sim = new Simulator({ users, rate, url, key, prefix: 'demo-', progress: process.stderr })
  let simulating = false
  // Listening from the start: a Ctrl-C while the server starts must not leave it running on its own.
  let stopping = false
  const stopped = new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) return
      stopping = true
      void (async () => {
        if (simulating) process.stdout.write(summaryLine(await sim.stop()) + '\n')
        // The server takes SIGINT and SIGTERM alike (graceful); a closed terminal becomes SIGTERM.
        child.kill(signal === 'SIGHUP' ? 'SIGTERM' : signal)
        const timer = setTimeout(killChild, STOP_TIMEOUT_MS)
        await exited
        clearTimeout(timer)
        resolve()
      })()
    }
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(signal))
  })

  let childGone = false
  void exited.then(() => { childGone = true })
  const deadline = Date.now() + START_TIMEOUT_MS
  while (!stopping && await status(`${url}/health`) !== 200) {
    if (childGone) throw new CliError(`the server exited while starting${logsOf()}`)
    if (Date.now() > deadline) {
      killChild()
      throw new CliError(`the server did not answer ${url}/health within ${START_TIMEOUT_MS / 1000} s${logsOf()}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }

  if (!stopping) {
    const token = signToken(secret, DEMO_USER, DEFAULT_TTL_S)
    const pageStatus = await status(`${url}/demo/`)
    const secretSource = envSecret !== undefined && envSecret !== '' ? 'JWT_SECRET' : DEV_SECRET_FILE
    process.stdout.write([
      'heart-gateway demo: the service on the embedded store, with simulated users',
      '',
      // The page reads the fragment, connects at once and drops it from the address bar; it never reaches the server.
      `  demo page   ${url}/demo/#user=${DEMO_USER}&token=${token}${pageStatus === 200 ? '' : `   (not in this build yet: it answered ${pageStatus === 0 ? 'nothing' : pageStatus})`}`,
      `  user id     ${DEMO_USER}   (simulated: ${sim.userIds.join(', ')}; ${rate} readings/s in all)`,
      `  token       ${token}`,
      `              a development token for ${DEMO_USER}, valid ${DEFAULT_TTL_S / 3600} h, signed with ${secretSource};`,
      '              the page\'s dev login works too (ENABLE_DEV_LOGIN is on: never expose this server)',
      `  service     ${url}   (health: ${url}/health)`,
      `  ingest key  ${key}   (fixed, as in the README: heart-gateway send ${DEMO_USER} 72 --key ${key})`,
      `  terminal    node ${process.argv[1]} watch ${DEMO_USER} --url ws://${HOST}:${port} --token <token above>`,
      '',
      'Ctrl-C stops the simulator and the server.',
      ''
    ].join('\n'))
    simulating = true
    void sim.start()
  }

  const outcome = await Promise.race([stopped.then(() => 'stopped' as const), exited.then(() => 'died' as const)])
  if (outcome === 'died' && !stopping) {
    if (simulating) await sim.stop()
    throw new CliError(`the server exited unexpectedly (code ${child.exitCode ?? child.signalCode})${logsOf()}`)
  }
  await stopped
  process.stdout.write(`server stopped (${child.exitCode !== null ? `exit code ${child.exitCode}` : child.signalCode})\n`)
  // A server stopped before it had its signal handlers (Ctrl-C during start-up) ends by the signal: that is fine too.
  if (child.exitCode !== 0 && (child.signalCode === null || child.signalCode === 'SIGKILL')) {
    throw new CliError(`the server did not stop cleanly${logsOf()}`)
  }
}
