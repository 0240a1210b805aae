/**
 * A reconnect storm at the default settings: a crowd behind one address (nginx without
 * TRUST_PROXY, a carrier-grade NAT) opens its sockets on one compiled instance without a refusal,
 * while an address sending bad tokens is slowed down by UPGRADE_RATE_LIMIT. 127.0.0.2 is a second
 * client address on loopback.
 */
import http from 'node:http'
import t from 'tap'
import { Refused, bearer, eventually, openWebSocket, startServer, token, type Frames } from './helper.js'

const CROWD = 2000
/** UPGRADE_RATE_LIMIT's default. */
const UPGRADE_RATE_LIMIT = 60
/** Every limit at its default: the test helpers raise some of them for other tests. */
const DEFAULTS = { UPGRADE_RATE_LIMIT: undefined, MAX_CONNECTIONS_PER_USER: undefined, MESSAGE_RATE_LIMIT: undefined }

/** Opens `count` sockets at once, one user each; resolves with how many opened and every refusal. */
export async function storm (tt: Parameters<typeof openWebSocket>[0], url: string, count: number, opts: Parameters<typeof openWebSocket>[2] = {}): Promise<{ opened: Frames[], failures: string[], ms: number }> {
  const started = performance.now()
  const results = await Promise.allSettled(Array.from({ length: count }, async (_, i) =>
    await openWebSocket(tt, url, { ...opts, headers: bearer(`crowd-${i}`) })))
  const ms = Math.round(performance.now() - started)
  const opened = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
  const failures = results.flatMap((r) => r.status === 'rejected' ? [r.reason instanceof Refused ? `HTTP ${r.reason.status}` : String(r.reason)] : [])
  return { opened, failures, ms }
}

t.test(`${CROWD} sockets from one address open on one instance at the defaults; bad tokens from another address get 429 after ${UPGRADE_RATE_LIMIT} refusals`, async (t) => {
  const server = await startServer(t, DEFAULTS)
  const url = `ws://127.0.0.1:${server.port}/heart/current`

  // A timed-out handshake would be the test machine's load, not a refusal: the storm gets time.
  const crowd = await storm(t, url, CROWD, { localAddress: '127.0.0.1', handshakeTimeoutMs: 60000 })
  t.comment(`${crowd.opened.length} of ${CROWD} opened in ${crowd.ms} ms; refusals: ${crowd.failures.length}`)
  t.same(crowd.failures.slice(0, 5), [], 'no refusal')
  t.equal(crowd.opened.length, CROWD, 'all of them opened')
  const answers = await Promise.all(crowd.opened.slice(-20).map(async (f) => await f.ask({ type: 'ping' })))
  t.ok(answers.every((a) => a.type === 'pong'), 'and they answer')

  const guesser = { localAddress: '127.0.0.2' }
  for (let i = 1; i <= UPGRADE_RATE_LIMIT; i++) {
    const err = await openWebSocket(t, url, { ...guesser, headers: { authorization: `Bearer ${token('victim', { secret: 'a guess that is not the secret, 32+ chars' })}` } }).catch((e) => e)
    if (!(err instanceof Refused) || err.status !== 401) {
      t.fail(`bad token ${i} should get 401, got ${String(err)}`)
      return
    }
  }
  const refused = await openWebSocket(t, url, { ...guesser, headers: bearer('victim') }).catch((e) => e)
  t.ok(refused instanceof Refused && refused.status === 429, `after ${UPGRADE_RATE_LIMIT} bad tokens even a valid one from that address gets 429 (${String(refused)})`)
  t.ok(Number((refused as Refused).headers?.['retry-after']) > 0, 'with retry-after')
  t.match(JSON.parse((refused as Refused).body), { statusCode: 429, error: 'Too Many Requests' })

  const others = await Promise.all(Array.from({ length: 20 }, async (_, i) => await openWebSocket(t, url, { localAddress: '127.0.0.1', headers: bearer(`late-${i}`) })))
  t.equal(others.length, 20, 'valid clients from the first address still connect')
})

/** GET `path` from the loopback address `from`; resolves with the status. */
async function getFrom (port: number, from: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, localAddress: from, headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject)
  })
}

t.test('X-Forwarded-For from a peer TRUST_PROXY does not trust: one warning per peer, every request counted', async (t) => {
  // 127.0.0.2 is the trusted proxy; 127.0.0.1 and 127.0.0.3 are peers sending the header without being trusted.
  const server = await startServer(t, { ...DEFAULTS, TRUST_PROXY: '127.0.0.2' })
  const xff = { 'x-forwarded-for': '203.0.113.9' }
  for (let i = 0; i < 5; i++) t.equal((await getFrom(server.port, '127.0.0.1', '/health', xff)).status, 200)
  for (let i = 0; i < 3; i++) t.equal((await getFrom(server.port, '127.0.0.3', '/health', xff)).status, 200)
  for (let i = 0; i < 3; i++) t.equal((await getFrom(server.port, '127.0.0.2', '/health', xff)).status, 200, 'through the trusted proxy')
  t.equal((await getFrom(server.port, '127.0.0.1', '/health')).status, 200, 'without the header')
  const frames = await openWebSocket(t, `ws://127.0.0.1:${server.port}/heart/current`, { localAddress: '127.0.0.1', headers: { ...bearer('u1'), ...xff } })
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'an upgrade with the header still works')

  const metrics = (await getFrom(server.port, '127.0.0.1', '/metrics')).body
  t.match(metrics, /^heart_untrusted_forwarded_total 9$/m, '5 + 3 requests and the upgrade, not the trusted proxy\'s')
  const warnings = (): Array<{ peer: string, msg: string, level: number }> => server.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((e) => /X-Forwarded-For from a peer TRUST_PROXY does not trust/.test(e.msg))
  t.ok(await eventually(() => warnings().length >= 2, 3000), 'warned')
  t.same(warnings().map((w) => w.peer).sort(), ['127.0.0.1', '127.0.0.3'], 'once per untrusted peer')
  t.equal(warnings()[0].level, 40, 'at warn')
})
