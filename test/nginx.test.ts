/**
 * nginx.conf as production runs it: the real nginx binary, a self-signed certificate, and two
 * compiled instances sharing a private Redis, all on loopback ports of the test's own
 * (test/nginx-harness.ts). The config is used as written, with only the literals an operator
 * replaces substituted.
 */
import t from 'tap'
import { readFile } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import tls from 'node:tls'
import { Frames, ROOT, eventually, token, type ServerProcess } from './helper.js'
import { HOST, Refused, SERVER_NAME, startStack, type Answer, type WsOptions } from './nginx-harness.js'

const TIMEOUT_MS = 5000

const CONF = await readFile(path.join(ROOT, 'nginx.conf'), 'utf8')
const stack = await startStack(t)
const TRUST = stack.trust

async function httpsRequest (method: string, urlPath: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return await stack.request(method, urlPath, headers, body)
}

async function httpsGet (urlPath: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await httpsRequest('GET', urlPath, headers)
}

async function openWs (tt: { teardown: (fn: () => void) => void }, opts: WsOptions = {}): Promise<Frames> {
  return await stack.openWs(tt, opts)
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
