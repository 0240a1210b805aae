/**
 * The mini-program client under WeChat's real behaviour (issue 11, item 12), against the real
 * compiled server, through test/wx-shim.ts: a `wx` typed against the official
 * miniprogram-api-typings that behaves as WeChat documents it (5 sockets at most, a refused
 * handshake only as onError + onClose(1006), close reasons of at most 123 UTF-8 bytes, send's fail
 * callback). Each case is one of the faults a phone met: an instance shutting down (1001) in front
 * of 20 phones, a 6 s outage, a clock 5 minutes slow, a sixth socket, a long Chinese errMsg, a
 * socket that died without WeChat saying so, and the app in the background.
 */
import t, { type Test } from 'tap'
import net from 'node:net'
import type { DisconnectInfo, HeartClient as HeartClientType, HeartClientError, HeartClientOptions, Reading } from '../client/heart-client.js'
import { eventually, postReading, sharedRedis, sleep, startServer, token, uniquePrefix, within, type ServerProcess } from './helper.js'
import { WxShim, MAX_SOCKETS } from './wx-shim.js'
import { loadClient } from './client-loader.js'

const KEY = 'client-wechat-key'
const { HeartClient } = loadClient()

function wsUrl (port: number): string {
  return `ws://127.0.0.1:${port}/heart/current`
}

function newClient (t: Test, shim: WxShim, opts: Omit<HeartClientOptions, 'wx'>, Client = HeartClient): HeartClientType {
  const client = new Client({ wx: shim, ...opts })
  t.teardown(() => {
    client.close()
    shim.destroy()
  })
  return client
}

async function post (server: ServerProcess, userId: string, bpm: number): Promise<string> {
  const r = await postReading(server, KEY, userId, bpm, 3000)
  if (r.status !== 202 || r.id === undefined) throw new Error(`ingest answered ${r.status}`)
  return r.id
}

/** Whether the server refuses `jwt` now (by its own clock). */
async function refusedByServer (server: ServerProcess, userId: string, jwt: string): Promise<boolean> {
  const res = await fetch(`${server.url}/heart/${userId}/readings`, { headers: { authorization: `Bearer ${jwt}` }, signal: AbortSignal.timeout(3000) })
  return res.status === 401
}

function spread (values: number[]): number {
  return Math.max(...values) - Math.min(...values)
}

const env = { REDIS_URL: (await sharedRedis()).url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY }
const server = await startServer(t, env)

t.test('1001 from an instance shutting down: 20 phones redial spread over 0-2 s, not at once', async (t) => {
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  // A balancer in front of both, as nginx with proxy_next_upstream error: A while it listens, else B.
  const front = net.createServer((inbound) => {
    const outbound = net.connect(a.port, '127.0.0.1')
    outbound.once('error', () => {
      const other = net.connect(b.port, '127.0.0.1')
      other.once('error', () => inbound.destroy())
      inbound.pipe(other).pipe(inbound)
    })
    outbound.once('connect', () => inbound.pipe(outbound).pipe(inbound))
    inbound.on('error', () => { outbound.destroy() })
  })
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => front.close(() => resolve())))
  const port = (front.address() as net.AddressInfo).port

  const phones = Array.from({ length: 20 }, (_, i) => {
    const shim = new WxShim()
    const closedAt: number[] = []
    const client = newClient(t, shim, {
      url: wsUrl(port),
      token: token(`storm-${i}`),
      onDisconnect: (info) => { if (info.code === 1001) closedAt.push(Date.now()) }
    })
    client.connect()
    return { shim, client, closedAt }
  })
  t.ok(await eventually(() => phones.every((p) => p.client.state === 'open'), 15000), 'all 20 phones connected through A')

  const stopping = Date.now()
  const exited = a.stop('SIGTERM')
  t.equal(await within(exited, 10000, 'A exits'), 0)
  const exitMs = Date.now() - stopping
  t.ok(await eventually(() => phones.every((p) => p.client.state === 'open' && p.shim.tasks.length >= 2), 10000), 'all 20 are back, on B')
  t.ok(phones.every((p) => p.closedAt.length === 1), 'each was closed with 1001')
  const redials = phones.map((p) => p.shim.tasks[1].createdAt - p.closedAt[0])
  t.ok(redials.every((ms) => ms >= 0 && ms <= 2300), `every redial within 2 s of its 1001 (${Math.min(...redials)}-${Math.max(...redials)} ms)`)
  t.ok(spread(redials) >= 1000, `redials spread over ${spread(redials)} ms, not at once`)
  t.comment(`A exited ${exitMs} ms after SIGTERM (SHUTDOWN_GRACE_MS 200); redial spread ${spread(redials)} ms`)
})

t.test('a 6 s outage: phones are back within about 2 s of the server; a subscribe and a get made meanwhile survive it', async (t) => {
  const own = await startServer(t, env)
  const subscriber = 'outage-late'
  const phones = Array.from({ length: 5 }, (_, i) => {
    const shim = new WxShim()
    let openedAt = 0
    // A request timeout shorter than the outage: a timer must not drop what waits for the server.
    const client = newClient(t, shim, { url: wsUrl(own.port), token: token(i === 0 ? subscriber : `outage-${i}`), requestTimeoutMs: 2000, onStateChange: (s) => { if (s === 'open') openedAt = Date.now() } })
    client.connect()
    return { shim, client, openedAt: () => openedAt }
  })
  t.ok(await eventually(() => phones.every((p) => p.client.state === 'open'), 10000))

  await own.stop('SIGKILL')
  const client = phones[0].client
  const readings: Reading[] = []
  const subscribed = client.subscribe(subscriber, (r) => readings.push(r))
  const got = client.get(subscriber)
  // The outage itself: 6 s without a server.
  await sleep(6000)
  const again = await startServer(t, { ...env, PORT: String(own.port) })
  const back = Date.now()
  t.ok(await eventually(() => phones.every((p) => p.client.state === 'open' && p.openedAt() >= back), 10000), 'every phone reconnected')
  const delays = phones.map((p) => p.openedAt() - back)
  t.ok(Math.max(...delays) <= 3500, `back within about 2 s of the server (${Math.min(...delays)}-${Math.max(...delays)} ms)`)
  t.comment(`after a 6 s outage, phones reopened ${Math.min(...delays)}-${Math.max(...delays)} ms after the server listened again`)

  t.same(await within(subscribed, 5000, 'subscribe'), { current: null }, 'the subscribe made during the outage is answered')
  t.same(await within(got, 5000, 'get'), { bpm: null, ts: null }, 'so is the get')
  const id = await post(again, subscriber, 77)
  t.ok(await eventually(() => readings.length === 1, 5000), 'and the subscription delivers')
  t.equal(readings[0].id, id)
})

/** Date of a phone whose clock is 5 minutes slow. */
const SLOW_MS = 5 * 60 * 1000
class SlowDate extends Date {
  constructor (...args: []) {
    if (args.length === 0) super(Date.now() - SLOW_MS)
    else super(...(args as []))
  }

  static now (): number {
    return Date.now() - SLOW_MS
  }
}
const { HeartClient: SlowClient } = loadClient({ Date: SlowDate })

t.test('a clock 5 minutes slow: expiry is judged by the server\'s clock, from pong', async (t) => {
  const u = 'slow-hidden'
  const shim = new WxShim()
  const first = token(u, { ttlS: 2 })
  const renewed: string[] = []
  const client = newClient(t, shim, { url: wsUrl(server.port), token: first, onTokenExpired: () => { renewed.push(token(u)); return renewed[renewed.length - 1] } }, SlowClient)
  client.connect()
  t.ok(await eventually(() => client.state === 'open' && shim.last.sent.some((f) => JSON.parse(f).type === 'ping') && shim.last.receivedAt > 0, 5000), 'open, and a ping answered')
  shim.hide()
  t.ok(await eventually(() => refusedByServer(server, u, first), 10000), 'the token has expired for the server')
  shim.show()
  t.ok(await eventually(() => client.state === 'open', 5000))
  t.equal(renewed.length, 1, 'renewed before dialling')
  t.equal(shim.tasks.length, 2, 'one connection with the new token, no refused attempt')
  t.equal(shim.last.header.Authorization, `Bearer ${renewed[0]}`)
})

t.test('a clock 5 minutes slow and no pong yet: handshakes that keep failing with a "valid" token ask for a new one', async (t) => {
  const u = 'slow-fresh'
  const expired = token(u, { ttlS: 1 })
  t.ok(await eventually(() => refusedByServer(server, u, expired), 10000), 'the token has expired for the server')
  const shim = new WxShim()
  const renewed: string[] = []
  const disconnects: DisconnectInfo[] = []
  const client = newClient(t, shim, {
    url: wsUrl(server.port),
    token: expired,
    backoff: { initialMs: 50, maxMs: 200 },
    onDisconnect: (info) => disconnects.push(info),
    onTokenExpired: () => { renewed.push(token(u)); return renewed[renewed.length - 1] }
  }, SlowClient)
  client.connect()
  t.ok(await eventually(() => client.state === 'open', 10000), 'connected in the end')
  t.equal(renewed.length, 1, 'onTokenExpired was called once')
  t.match(disconnects, [{ code: 1006, opened: false }, { code: 1006, opened: false }, { code: 1006, opened: false }], 'after three refused handshakes, each only a 1006')
  t.equal(disconnects.length, 3)
  t.ok(disconnects.every((d) => d.status === undefined), 'WeChat gives no HTTP status')
  t.equal(shim.last.header.Authorization, `Bearer ${renewed[0]}`)
})

t.test('a sixth client in one mini program: its connectSocket failure is reported, not retried silently', async (t) => {
  const shim = new WxShim()
  const clients = []
  for (let i = 0; i < MAX_SOCKETS; i++) {
    const c = newClient(t, shim, { url: wsUrl(server.port), token: token(`many-${i}`) })
    c.connect()
    t.ok(await eventually(() => c.state === 'open', 5000))
    clients.push(c)
  }
  const errors: HeartClientError[] = []
  const disconnects: DisconnectInfo[] = []
  const sixth = newClient(t, shim, { url: wsUrl(server.port), token: token('many-6'), onError: (err) => errors.push(err as HeartClientError), onDisconnect: (info) => disconnects.push(info) })
  sixth.connect()
  t.ok(await eventually(() => sixth.state === 'closed', 5000), 'the sixth client closes instead of reconnecting forever')
  t.match(errors, [{ code: 'too_many_sockets', message: /exceed max task count.*one client per app/ }])
  t.match(disconnects, [{ code: 1006, opened: false, retryInMs: null, reason: /exceed max task count/ }])
  t.equal(shim.refusedConnects, 1, 'one attempt')
  t.ok(clients.every((c) => c.state === 'open'), 'the five others are untouched')
})

t.test('a long Chinese errMsg: the close reason is cut to 123 UTF-8 bytes, so close succeeds and frees the place', async (t) => {
  const shim = new WxShim()
  const client = newClient(t, shim, { url: wsUrl(server.port), token: token('close-reason'), backoff: { initialMs: 50, maxMs: 200 } })
  client.connect()
  t.ok(await eventually(() => client.state === 'open', 5000))
  const errMsg = '网络连接已断开，请检查网络设置后重试'.repeat(8)
  const broken = shim.last
  broken.reportError(errMsg)
  t.ok(await eventually(() => client.state === 'open' && shim.tasks.length === 2, 5000), 'reconnected')
  t.same(broken.closeFailures, [], 'close did not fail')
  const reason = broken.closedByClient?.reason ?? ''
  t.ok(Buffer.byteLength(reason) <= 123 && Buffer.byteLength(reason) > 110, `the reason is ${Buffer.byteLength(reason)} bytes`)
  t.ok(errMsg.startsWith(reason), 'a whole-character start of the errMsg')
  t.ok(await eventually(() => broken.closed !== null, 5000), 'the old socket closed')
  t.equal(shim.places, 1, 'only the new socket holds a place')
})

t.test('a socket that died without WeChat saying so: the first failed send reconnects, long before deadAfterMs', async (t) => {
  const u = 'send-fail'
  const shim = new WxShim()
  const client = newClient(t, shim, { url: wsUrl(server.port), token: token(u), pingIntervalMs: 300, deadAfterMs: 30000, backoff: { initialMs: 50, maxMs: 200 } })
  const readings: Reading[] = []
  client.connect()
  await within(client.subscribe(u, (r) => readings.push(r)), 5000, 'subscribe')
  const posted = [await post(server, u, 80)]
  t.ok(await eventually(() => readings.length === 1, 5000))
  shim.last.sever()
  const severed = Date.now()
  // Asked at once, before the client's own next ping could find the socket dead first.
  const refused = t.rejects(within(client.get(u), 5000, 'get'), { code: 'disconnected' }, 'a request on the dead socket fails at once')
  posted.push(await post(server, u, 81), await post(server, u, 82))
  await refused
  t.ok(await eventually(() => shim.tasks.length === 2 && client.state === 'open', 5000), 'reconnected')
  t.comment(`reconnected ${Date.now() - severed} ms after the socket died (deadAfterMs 30000)`)
  t.ok(await eventually(() => readings.length === posted.length, 5000), 'what the dead socket missed is replayed')
  t.same(readings.map((r) => r.id), posted)
})

t.test('while the app is hidden, subscribe() and get() both wait for show, past requestTimeoutMs', async (t) => {
  const u = 'hidden'
  const shim = new WxShim()
  const client = newClient(t, shim, { url: wsUrl(server.port), token: token(u), requestTimeoutMs: 300 })
  client.connect()
  t.ok(await eventually(() => client.state === 'open', 5000))
  shim.hide()
  const readings: Reading[] = []
  const settled: string[] = []
  const subscribed = client.subscribe(u, (r) => readings.push(r))
  const got = client.get(u)
  subscribed.then(() => settled.push('subscribe'), (err) => settled.push(`subscribe ${err.code}`))
  got.then(() => settled.push('get'), (err) => settled.push(`get ${err.code}`))
  await post(server, u, 66)
  // Past the request timeout: nothing may give up while the app is away.
  await sleep(900)
  t.same(settled, [], 'neither failed nor timed out while hidden')
  t.equal(shim.tasks.length, 1, 'and nothing dialled')
  shim.show()
  t.match(await within(subscribed, 5000, 'subscribe'), { current: { bpm: 66 } }, 'subscribe is answered after show')
  t.match(await within(got, 5000, 'get'), { bpm: 66 })
  const id = await post(server, u, 67)
  t.ok(await eventually(() => readings.length === 1, 5000))
  t.equal(readings[0].id, id)
})
