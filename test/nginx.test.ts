/**
 * nginx.conf as production runs it: the real nginx binary, a self-signed certificate, and two
 * compiled instances sharing a private Redis, all on loopback ports of the test's own. The
 * config is used as written, with only the literals an operator replaces substituted.
 */
import t from 'tap'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { WebSocket } from 'ws'
import { Frames, ROOT, RedisServer, eventually, freePort, startServer, token, uniquePrefix, type ServerProcess } from './helper.js'

const HOST = '127.0.0.1'
/** The certificate's name; the test config's server_name too. */
const SERVER_NAME = 'localhost'
const TIMEOUT_MS = 5000

function nginxBinary (): string {
  if (process.env.NGINX_BIN !== undefined) return process.env.NGINX_BIN
  const found = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8', timeout: 5000 })
  return found.stdout.trim() || '/usr/sbin/nginx'
}

/** Replaces every occurrence of `from`, which must occur: a renamed literal fails the test instead of slipping through. */
function substitute (text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`nginx.conf no longer contains ${JSON.stringify(from)}: update test/nginx.test.ts`)
  return text.split(from).join(to)
}

interface Ports { https: number, http: number, upstreams: [number, number] }

/** nginx.conf with the operator's literals, the listen ports and every file path moved into `dir`. */
function testConfig (conf: string, dir: string, ports: Ports): string {
  const file = (name: string): string => path.join(dir, name)
  let c = conf
  c = substitute(c, '/etc/nginx/tls/heart.example.com.crt', file('cert.pem'))
  c = substitute(c, '/etc/nginx/tls/heart.example.com.key', file('key.pem'))
  c = substitute(c, 'heart.example.com', SERVER_NAME)
  c = substitute(c, 'listen 443 ssl;', `listen ${HOST}:${ports.https} ssl;`)
  c = substitute(c, 'listen 80;', `listen ${HOST}:${ports.http};`)
  c = substitute(c, 'server 127.0.0.1:3001 ', `server ${HOST}:${ports.upstreams[0]} `)
  c = substitute(c, 'server 127.0.0.1:3002 ', `server ${HOST}:${ports.upstreams[1]} `)
  c = substitute(c, 'pid /run/nginx.pid;', `pid ${file('nginx.pid')};`)
  c = substitute(c, '/var/log/nginx/error.log', file('error.log'))
  c = substitute(c, '/var/log/nginx/access.log', file('access.log'))
  c = substitute(c, '/var/www/acme', file('acme'))
  c = substitute(c, 'worker_processes auto;', 'worker_processes 2;')
  // Workers as www-data could not enter the private temp dir; without root the line is ignored anyway.
  c = substitute(c, 'user www-data;', process.getuid?.() === 0 ? 'user root;' : '')
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `    ${k}_temp_path ${file(k)};`).join('\n')
  c = substitute(c, 'http {\n', `http {\n${temp}\n`)
  return c
}

interface Stack {
  cert: string
  ports: Ports
  instances: [ServerProcess, ServerProcess]
  /** Output of `nginx -t` on the test config. */
  check: { status: number | null, output: string }
  testConf: string
  accessLog (): Promise<string>
}

async function waitForPort (port: number, proc: ChildProcess, ms: number): Promise<void> {
  const ok = await eventually(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error('nginx exited')
    return await new Promise<boolean>((resolve) => {
      const s = net.connect(port, HOST)
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
  }, ms)
  if (!ok) throw new Error(`nginx is not listening on ${port}`)
}

async function startStack (): Promise<Stack> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'heart-nginx-'))
  const openssl = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${SERVER_NAME}`,
    '-addext', `subjectAltName=DNS:${SERVER_NAME},IP:${HOST}`, '-days', '1',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')
  ], { encoding: 'utf8', timeout: 30000 })
  if (openssl.status !== 0) throw new Error(`openssl failed: ${openssl.stderr}`)
  const cert = await readFile(path.join(dir, 'cert.pem'), 'utf8')

  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  // Both instances share one store, as in production; trusted proxy = loopback, where nginx is.
  const env = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), TRUST_PROXY: 'loopback', SHUTDOWN_GRACE_MS: '1500' }
  const instances: [ServerProcess, ServerProcess] = [await startServer(t, env), await startServer(t, env)]

  const ports: Ports = { https: await freePort(), http: await freePort(), upstreams: [instances[0].port, instances[1].port] }
  const testConf = testConfig(await readFile(path.join(ROOT, 'nginx.conf'), 'utf8'), dir, ports)
  const confFile = path.join(dir, 'nginx.conf')
  await writeFile(confFile, testConf)

  const bin = nginxBinary()
  const base = ['-c', confFile, '-p', dir, '-e', path.join(dir, 'startup.log')]
  const checked = spawnSync(bin, ['-t', ...base], { encoding: 'utf8', timeout: 10000 })
  const check = { status: checked.status, output: `${checked.stdout}${checked.stderr}` }
  if (check.status !== 0) throw new Error(`nginx -t failed:\n${check.output}`)

  const nginx = spawn(bin, [...base, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  nginx.stderr?.on('data', (chunk) => { stderr += String(chunk) })
  const exited = once(nginx, 'exit')
  t.teardown(async () => {
    if (nginx.exitCode === null && nginx.signalCode === null) {
      // SIGTERM is nginx's fast shutdown (SIGQUIT would wait for every WebSocket to end).
      nginx.kill('SIGTERM')
      const done = await Promise.race([exited.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), TIMEOUT_MS))])
      if (done !== true) nginx.kill('SIGKILL')
    }
    await rm(dir, { recursive: true, force: true })
  })
  try {
    await waitForPort(ports.https, nginx, 10000)
    await waitForPort(ports.http, nginx, 10000)
  } catch (err) {
    throw new Error(`${(err as Error).message}:\n${stderr}\n${await readFile(path.join(dir, 'error.log'), 'utf8').catch(() => '')}`)
  }
  return {
    cert, ports, instances, check, testConf,
    accessLog: async () => await readFile(path.join(dir, 'access.log'), 'utf8').catch(() => '')
  }
}

const CONF = await readFile(path.join(ROOT, 'nginx.conf'), 'utf8')
const stack = await startStack()
const WSS = `wss://${HOST}:${stack.ports.https}/heart/current`
/** TLS options of a client that trusts the test certificate and sends SNI, as a mini program does. */
const TRUST = { ca: stack.cert, servername: SERVER_NAME }

interface Answer { status: number, headers: http.IncomingHttpHeaders, body: string }

async function httpsRequest (method: string, urlPath: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = https.request({ method, host: HOST, port: stack.ports.https, path: urlPath, headers, agent: false, timeout: TIMEOUT_MS, ...TRUST }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath} timed out`)))
    req.on('error', reject)
    req.end(body)
  })
}

async function httpsGet (urlPath: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await httpsRequest('GET', urlPath, headers)
}

class Refused extends Error {
  constructor (readonly status: number, readonly body: string) {
    super(`upgrade refused with ${status}: ${body}`)
  }
}

/** Opens the WebSocket through nginx; rejects with Refused on an HTTP answer instead of an upgrade. */
async function openWs (tt: { teardown: (fn: () => void) => void }, opts: { headers?: Record<string, string>, query?: string } = {}): Promise<Frames> {
  const ws = new WebSocket(WSS + (opts.query ?? ''), { headers: opts.headers, handshakeTimeout: TIMEOUT_MS, ...TRUST })
  tt.teardown(() => ws.terminate())
  const frames = new Frames(ws)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => reject(new Refused(res.statusCode ?? 0, body)))
    })
  })
  return frames
}

const bearer = (userId: string): Record<string, string> => ({ authorization: `Bearer ${token(userId)}` })

/**
 * Which instance logged `socket open` for this user (user ids are unique per test). Its log line
 * can arrive after the socket's first frame: poll with eventually().
 */
function instanceOf (userId: string): ServerProcess | undefined {
  return stack.instances.find((s) => s.logs.some((l) => l.includes('"msg":"socket open"') && l.includes(`"userId":"${userId}"`)))
}

async function handshake (opts: tls.ConnectionOptions): Promise<{ protocol: string | null } | { error: string }> {
  return await new Promise((resolve) => {
    const socket = tls.connect({ host: HOST, port: stack.ports.https, ...TRUST, ...opts })
    socket.setTimeout(TIMEOUT_MS, () => socket.destroy(new Error('handshake timed out')))
    socket.once('secureConnect', () => {
      resolve({ protocol: socket.getProtocol() })
      socket.end()
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }))
  })
}

t.test('the config has no `ssl on` and offers TLS 1.2 and 1.3 only', async (t) => {
  t.notMatch(CONF, /^\s*ssl\s+on\s*;/m, '`ssl on` was removed in nginx 1.25 and is not used')
  const protocols = CONF.match(/^\s*ssl_protocols\s+([^;]*);/gm) ?? []
  t.same(protocols.map((l) => l.trim()), ['ssl_protocols TLSv1.2 TLSv1.3;'])
})

t.test('the access log format never records query strings, where ?access_token= travels', async (t) => {
  const format = /log_format[^;]*;/.exec(CONF)?.[0] ?? ''
  t.match(format, /\$uri/)
  t.notMatch(format, /\$(request|request_uri|args|query_string|arg_\w+)\b/)
})

t.test('nginx -t accepts the config, with every operator literal substituted', async (t) => {
  t.equal(stack.check.status, 0)
  t.match(stack.check.output, /test is successful/)
  const directives = stack.testConf.replace(/#.*$/gm, '')
  t.notMatch(directives, /heart\.example\.com|\s\/(etc|var|run)\/|127\.0\.0\.1:300[12]\b/, 'nothing left pointing at the production host')
})

t.test('GET /health through nginx answers 200 JSON from an instance, with HSTS', async (t) => {
  const res = await httpsGet('/health')
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  t.match(JSON.parse(res.body), { status: 'ok', store: 'redis' })
  t.match(res.headers['strict-transport-security'], /max-age=\d+/)
})

t.test('plain http redirects to https with 301, keeping path and query', async (t) => {
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get({ host: HOST, port: stack.ports.http, path: '/health?probe=1', agent: false, timeout: TIMEOUT_MS }, (r) => { r.resume(); resolve(r) })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', reject)
  })
  t.equal(res.statusCode, 301)
  t.equal(res.headers.location, `https://${SERVER_NAME}/health?probe=1`)
})

t.test('the WebSocket works through nginx: the legacy frame answers 0, a JSON ping answers pong', async (t) => {
  const frames = await openWs(t, { headers: bearer('u1') })
  frames.ws.send('u1')
  t.equal(await frames.next(), '0')
  t.match(await frames.ask({ type: 'ping', reqId: 7 }), { type: 'pong', reqId: 7 })
  frames.ws.close(1000)
  t.equal(await frames.closed, 1000)
})

t.test('an upgrade without a token answers 401 from the instance through nginx', async (t) => {
  const err = await openWs(t).then(() => null, (e: unknown) => e)
  t.type(err, Refused)
  t.equal((err as Refused).status, 401)
  t.match(JSON.parse((err as Refused).body), { statusCode: 401, message: /missing token/ })
})

t.test('TLS 1.0 and 1.1 are refused with a protocol_version alert; TLS 1.2 and 1.3 are accepted', async (t) => {
  // SECLEVEL=0 lets this client offer TLS 1.1 at all, so the refusal is the server's.
  const old = await handshake({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })
  t.same(old, { error: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' })
  t.same(await handshake({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }), { protocol: 'TLSv1.2' })
  t.same(await handshake({ minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }), { protocol: 'TLSv1.3' })
})

t.test('TLS 1.2 without forward secrecy (RSA key exchange) is refused', async (t) => {
  const res = await handshake({ maxVersion: 'TLSv1.2', ciphers: 'AES128-GCM-SHA256:AES256-GCM-SHA384' })
  t.ok('error' in res, `handshake refused (${JSON.stringify(res)})`)
})

t.test('/metrics is answered 404 by nginx itself, never by an instance', async (t) => {
  const res = await httpsGet('/metrics')
  t.equal(res.status, 404)
  t.match(res.headers['content-type'], /^text\/html/, "nginx's page, not the instance's JSON 404")
})

t.test('a 500-reading batch passes nginx to an instance; a body over 128 KB is refused by nginx with 413', async (t) => {
  const now = Date.now()
  const readings = Array.from({ length: 500 }, (_, i) => ({ bpm: 60 + (i % 100), ts: now - (500 - i) * 1000 }))
  const batch = JSON.stringify({ readings }, null, 1)
  const json = { 'content-type': 'application/json' }
  const passed = await httpsRequest('POST', '/heart/u1/readings', json, batch)
  // No API key is configured, so the instance refuses it; what matters is who answers.
  t.match(passed.headers['content-type'], /^application\/json/, `the instance answered (${passed.status}), not nginx`)
  t.not(passed.status, 413)

  const huge = await httpsRequest('POST', '/heart/u1/readings', json, JSON.stringify({ pad: 'x'.repeat(129 * 1024) }))
  t.equal(huge.status, 413)
  t.match(huge.headers['content-type'], /^text\/html/, "nginx's page")
})

t.test('instances see the client address from nginx, not a forged X-Forwarded-For', async (t) => {
  const probe = `/xff-probe-${process.pid}`
  const res = await httpsGet(probe, { 'x-forwarded-for': '203.0.113.7', 'x-real-ip': '203.0.113.8' })
  t.equal(res.status, 404, 'an unknown route reaches an instance')
  const logged = (): string | undefined => stack.instances.flatMap((s) => s.logs).find((l) => l.includes('incoming request') && l.includes(probe))
  // The instance's log line can reach this process after the response does.
  t.ok(await eventually(() => logged() !== undefined, TIMEOUT_MS), 'an instance logged the request')
  t.match(JSON.parse(logged() ?? '{}'), { req: { url: probe, remoteAddress: HOST } })
  t.notOk(stack.instances.some((s) => s.logs.some((l) => l.includes('203.0.113.'))), 'the forged address is nowhere')
})

t.test('the access log records WebSocket handshakes without the ?access_token= credential', async (t) => {
  const secret = token('ulog')
  const frames = await openWs(t, { query: `?access_token=${secret}` })
  frames.ws.send('ulog')
  t.equal(await frames.next(), '0')
  frames.ws.close(1000)
  await frames.closed
  // nginx writes a WebSocket's line when the connection ends.
  t.ok(await eventually(async () => / "GET \/heart\/current HTTP\/1\.1" 101 /.test(await stack.accessLog()), TIMEOUT_MS), 'the handshake is logged')
  t.notOk((await stack.accessLog()).includes(secret), 'the token is not')
})

t.test('a draining instance refuses new sockets with 503, nginx hands them to the other, and its open sockets end with 1001', async (t) => {
  // Sockets land by least_conn; open until each instance holds one.
  const open: Array<{ user: string, frames: Frames }> = []
  for (let i = 0; i < 8 && !stack.instances.every((s) => open.some((o) => instanceOf(o.user) === s)); i++) {
    const user = `drain${i}`
    open.push({ user, frames: await openWs(t, { headers: bearer(user) }) })
    t.ok(await eventually(() => instanceOf(user) !== undefined, TIMEOUT_MS), `${user} is logged by an instance`)
  }
  const [victim, survivor] = stack.instances
  const onVictim = open.find((o) => instanceOf(o.user) === victim)
  const onSurvivor = open.find((o) => instanceOf(o.user) === survivor)
  if (onVictim === undefined || onSurvivor === undefined) throw new Error('least_conn did not spread sockets over both instances')

  victim.proc.kill('SIGTERM')
  t.ok(await eventually(() => victim.logs.some((l) => l.includes('shutting down')), TIMEOUT_MS), 'the victim drains')

  // Kept open, so the survivor holds more sockets and least_conn keeps offering the victim first.
  for (let i = 0; i < 4; i++) {
    const user = `late${i}`
    const frames = await openWs(t, { headers: bearer(user) })
    frames.ws.send(user)
    t.equal(await frames.next(), '0', `${user} got a working socket during the drain`)
    t.ok(await eventually(() => instanceOf(user) === survivor, TIMEOUT_MS), `${user} is served by the survivor`)
  }
  t.ok(await eventually(() => victim.logs.some((l) => l.includes('"statusCode":503')), TIMEOUT_MS), 'the victim refused at least one of them, unseen by the client')

  onVictim.frames.ws.send(onVictim.user)
  t.equal(await onVictim.frames.next(), '0', 'a socket open on the draining instance still works')
  t.equal(await Promise.race([onVictim.frames.closed, new Promise((resolve) => setTimeout(() => resolve('timeout'), 1500 + TIMEOUT_MS))]), 1001,
    'it is closed with 1001 through nginx once the drain ends')
  t.equal(await Promise.race([victim.exitCode, new Promise((resolve) => setTimeout(() => resolve('timeout'), TIMEOUT_MS))]), 0, 'the victim exits 0')

  onSurvivor.frames.ws.send(onSurvivor.user)
  t.equal(await onSurvivor.frames.next(), '0', "the other instance's sockets are untouched")
})

t.test('with one instance gone, requests and sockets through nginx go to the other', async (t) => {
  const [gone, left] = stack.instances
  t.not(gone.proc.exitCode, null, 'the first instance has exited (previous test)')
  for (let i = 0; i < 4; i++) {
    const res = await httpsGet('/health')
    t.equal(res.status, 200, `health ${i} answered`)
  }
  const frames = await openWs(t, { headers: bearer('after') })
  frames.ws.send('after')
  t.equal(await frames.next(), '0')
  t.ok(await eventually(() => instanceOf('after') === left, TIMEOUT_MS), 'served by the remaining instance')
})
