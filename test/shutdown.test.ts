/**
 * The compiled server as a process: how it drains and exits on SIGTERM/SIGINT, and how it refuses
 * to start on bad settings. Start-ups that must fail are spawned here, since startServer() waits
 * for "Server listening".
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { Frames, ROOT, Refused, TEST_SECRET, eventually, freePort, openWebSocket, startServer, token, within, type ServerProcess, type WsOptions } from './helper.js'

const GRACE_MS = 1000
const TIMEOUT_MS = 5000

async function health (server: ServerProcess): Promise<{ status: number, body: any }> {
  const res = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  return { status: res.status, body: await res.json() }
}

function openWs (tt: { teardown: (fn: () => void) => void }, server: ServerProcess, opts: WsOptions = {}): Promise<Frames> {
  return openWebSocket(tt, `ws://127.0.0.1:${server.port}/heart/current`, opts)
}

async function drains (t: Parameters<typeof startServer>[0], signal: NodeJS.Signals): Promise<void> {
  const server = await startServer(t, { SHUTDOWN_GRACE_MS: String(GRACE_MS) })
  const bearerToken = token('u1')
  const queryToken = token('u2')
  const viaHeader = await openWs(t, server, { headers: { authorization: `Bearer ${bearerToken}` } })
  // A browser's socket: its token is in the URL, which the request log records.
  const viaQuery = await openWs(t, server, { query: `?access_token=${queryToken}` })
  t.equal((await health(server)).status, 200, 'healthy before the signal')

  const signalled = Date.now()
  server.proc.kill(signal)

  t.ok(await eventually(async () => (await health(server)).status === 503, 500, 10), '/health turns 503 at once')
  t.match((await health(server)).body, { status: 'unavailable', reason: 'shutting down' })

  const refused = await openWs(t, server, { headers: { authorization: `Bearer ${token('u3')}` } }).then(() => null, (e: unknown) => e)
  t.type(refused, Refused, 'a new socket is refused during the drain')
  t.equal((refused as Refused).status, 503)
  t.match(JSON.parse((refused as Refused).body), { statusCode: 503, message: /shutting down/ })

  viaHeader.ws.send('u1')
  t.equal(await viaHeader.next(), '0', 'an open socket still answers during the drain')
  t.match(await viaQuery.ask({ type: 'ping', reqId: 1 }), { type: 'pong', reqId: 1 })

  t.equal(await within(viaHeader.closed, GRACE_MS + TIMEOUT_MS, 'close'), 1001, 'closed with 1001 (going away)')
  t.equal(await within(viaQuery.closed, TIMEOUT_MS, 'close'), 1001)
  t.ok(Date.now() - signalled >= GRACE_MS - 50, 'not before the grace period ends')

  t.equal(await within(server.exitCode, TIMEOUT_MS, 'exit'), 0, 'exits with 0')
  // 'exit' can come before the last lines of the pipe: wait for them.
  const logged = async (match: (l: string) => boolean): Promise<boolean> => await eventually(() => server.logs.some(match), TIMEOUT_MS)
  t.ok(await logged((l) => l.includes('shutting down') && l.includes(`"signal":"${signal}"`)), 'logs that it is shutting down, and why')
  t.ok(await logged((l) => l.includes('"msg":"shut down"')), 'logs that it is done')
  t.ok(await logged((l) => l.includes('/heart/current?access_token=')), 'the query-token request was logged')
  t.notOk(server.logs.some((l) => l.includes(bearerToken) || l.includes(queryToken)), 'no token in any log line')
}

t.test('SIGTERM: /health turns 503, new sockets get 503, open sockets work until closed with 1001, exit 0', async (t) => {
  await drains(t, 'SIGTERM')
})

t.test('SIGINT drains the same way and exits 0', async (t) => {
  await drains(t, 'SIGINT')
})

t.test('a second signal during the drain exits at once with 1', async (t) => {
  const server = await startServer(t, { SHUTDOWN_GRACE_MS: '30000' })
  // Something connected: with nothing, there is no drain to interrupt.
  await openWs(t, server, { headers: { authorization: `Bearer ${token('u1')}` } })
  server.proc.kill('SIGTERM')
  t.ok(await eventually(() => server.logs.some((l) => l.includes('shutting down')), TIMEOUT_MS), 'draining')
  const second = Date.now()
  server.proc.kill('SIGINT')
  t.equal(await within(server.exitCode, TIMEOUT_MS, 'exit'), 1)
  t.ok(Date.now() - second < 2000, 'without waiting for the drain')
  t.ok(await eventually(() => server.logs.some((l) => l.includes('second signal')), TIMEOUT_MS))
})

t.test('SIGINT with nothing connected exits 0 at once, well before SHUTDOWN_GRACE_MS', async (t) => {
  const grace = 30000
  const server = await startServer(t, { SHUTDOWN_GRACE_MS: String(grace) })
  const signalled = Date.now()
  server.proc.kill('SIGINT')
  t.equal(await within(server.exitCode, TIMEOUT_MS, 'exit'), 0)
  t.ok(Date.now() - signalled < grace / 10, 'no drain: no one is there to move away')
  t.ok(await eventually(() => server.logs.some((l) => l.includes('"msg":"shut down"')), TIMEOUT_MS), 'a clean shutdown')
})

t.test('NODE_ENV=development: Ctrl-C stops at once even with a socket open, closing it with 1001', async (t) => {
  const grace = 30000
  const server = await startServer(t, { NODE_ENV: 'development', SHUTDOWN_GRACE_MS: String(grace) })
  const socket = await openWs(t, server, { headers: { authorization: `Bearer ${token('u1')}` } })
  const signalled = Date.now()
  server.proc.kill('SIGINT')
  t.equal(await within(socket.closed, TIMEOUT_MS, 'close'), 1001)
  t.equal(await within(server.exitCode, TIMEOUT_MS, 'exit'), 0)
  t.ok(Date.now() - signalled < grace / 10, 'no drain: no load balancer in development')
})

/** Runs the compiled server with exactly `env` (plus PATH) and waits for it to exit. */
async function failedStart (env: Record<string, string>): Promise<{ code: number | null, output: string }> {
  const proc = spawn(process.execPath, ['dist/src/server.js'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: String(await freePort()), ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  proc.stdout.on('data', (chunk) => { output += String(chunk) })
  proc.stderr.on('data', (chunk) => { output += String(chunk) })
  const exited = once(proc, 'close').then(([code]) => code as number | null)
  try {
    return { code: await within(exited, 15000, 'exit'), output }
  } catch (err) {
    proc.kill('SIGKILL')
    throw new Error(`${(err as Error).message}; it printed:\n${output}`)
  }
}

const DEV = { NODE_ENV: 'test', JWT_SECRET: TEST_SECRET, LOG_LEVEL: 'info' }

t.test('PORT out of range: exits 1 naming PORT', async (t) => {
  const { code, output } = await failedStart({ ...DEV, PORT: '99999' })
  t.equal(code, 1)
  t.match(output, /PORT/)
  t.notMatch(output, /Server listening/)
})

t.test('MAX_PAYLOAD_BYTES that is not a number: exits 1 naming MAX_PAYLOAD_BYTES', async (t) => {
  const { code, output } = await failedStart({ ...DEV, MAX_PAYLOAD_BYTES: 'abc' })
  t.equal(code, 1)
  t.match(output, /MAX_PAYLOAD_BYTES/)
})

t.test('NODE_ENV=production without a Redis setting or STORE=memory: exits 1 naming STORE', async (t) => {
  const { code, output } = await failedStart({ NODE_ENV: 'production', LOG_LEVEL: 'info', JWT_SECRET: 'p'.repeat(40) })
  t.equal(code, 1)
  t.match(output, /STORE: with NODE_ENV=production set REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES, or STORE=memory/)
  t.notMatch(output, /Server listening/)
})

t.test('NODE_ENV=production without JWT_SECRET: exits 1 naming JWT_SECRET', async (t) => {
  const { code, output } = await failedStart({ NODE_ENV: 'production', STORE: 'memory', LOG_LEVEL: 'info' })
  t.equal(code, 1)
  t.match(output, /JWT_SECRET/)
  t.notMatch(output, /Server listening/)
})

t.test('NODE_ENV=production with a JWT_SECRET under 32 characters: exits 1 naming JWT_SECRET, not printing it', async (t) => {
  const secret = 'short-secret-9f3a'
  const { code, output } = await failedStart({ NODE_ENV: 'production', STORE: 'memory', LOG_LEVEL: 'info', JWT_SECRET: secret })
  t.equal(code, 1)
  t.match(output, /JWT_SECRET/)
  t.notOk(output.includes(secret), 'the secret is not printed')
})

t.test('a start-up failure is printed on stderr even with LOG_LEVEL=silent', async (t) => {
  const { code, output } = await failedStart({ NODE_ENV: 'production', STORE: 'memory', LOG_LEVEL: 'silent' })
  t.equal(code, 1)
  t.match(output, /could not start: .*JWT_SECRET/)
})
