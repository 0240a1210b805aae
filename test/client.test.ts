/**
 * The mini-program client (client/heart-client.js) against the real compiled server, through a
 * `wx` shim on `ws` (test/wx-shim.ts), with the faults a phone meets: the server restarting,
 * Redis restarting, the token expiring, the network dropping or going silent, the app going to the
 * background. Every reading posted must reach the app once, in order.
 *
 * The client is loaded as a mini program loads it (test/client-loader.ts).
 * Each fault runs three times: on the shim's own SocketTask (a mini program), and through
 * client/ws-adapter.js over `ws` (the CLI's watch) and over a WebSocket that takes no headers (the
 * demo page in a browser), the adapter loaded the same way.
 */
import t, { type Test } from 'tap'
import { WebSocketServer } from 'ws'
import type { DisconnectInfo, HeartClient as HeartClientType, HeartClientError, HeartClientOptions, Reading } from '../client/heart-client.js'
import { RedisServer, eventually, postReading, sharedRedis, sleep, startServer, token, uniquePrefix, within, type ServerProcess } from './helper.js'
import { WxShim, type Adapter } from './wx-shim.js'
import { loadClient, loadScript } from './client-loader.js'

const KEY = 'client-test-key'
/** Small delays so reconnects are quick; close codes that ask for more are tested below. */
const FAST_BACKOFF = { initialMs: 50, maxMs: 300 }

const { HeartClient } = loadClient()
const { wxFromWebSocket } = loadScript('ws-adapter.js') as Pick<Adapter, 'wxFromWebSocket'>

/** Where the client's sockets come from; users of the shared server get a suffix per flavour. */
interface Flavour {
  name: string
  shim: () => WxShim
  user: (base: string) => string
}

const FLAVOURS: Flavour[] = [
  { name: 'wx', shim: () => new WxShim(), user: (u) => u },
  { name: 'ws adapter', shim: () => new WxShim({ wxFromWebSocket, browser: false }), user: (u) => `${u}-ws` },
  { name: 'browser adapter', shim: () => new WxShim({ wxFromWebSocket, browser: true }), user: (u) => `${u}-br` }
]

/** The test once per flavour. */
function each (name: string, fn: (t: Test, f: Flavour) => Promise<void>): void {
  for (const f of FLAVOURS) t.test(`${name} [${f.name}]`, (t) => fn(t, f))
}

function wsUrl (server: ServerProcess): string {
  return `ws://127.0.0.1:${server.port}/heart/current`
}

/** Posts a reading through ingest; returns its history id. */
async function post (server: ServerProcess, userId: string, bpm: number): Promise<string> {
  const r = await postReading(server, KEY, userId, bpm, 3000)
  if (r.status !== 202 || r.id === undefined) throw new Error(`ingest answered ${r.status}`)
  return r.id
}

/** What an app's onReading saw. */
class Seen {
  readonly readings: Reading[] = []
  readonly add = (r: Reading): void => { this.readings.push(r) }

  get ids (): Array<string | null> {
    return this.readings.map((r) => r.id)
  }

  async count (n: number, ms = 5000): Promise<boolean> {
    return await eventually(() => this.readings.length >= n, ms)
  }
}

/** Frames of `type` the client sent on a socket, parsed. */
function sentFrames (shim: WxShim, index: number, type: string): any[] {
  return shim.tasks[index].sent.map((s) => JSON.parse(s)).filter((f) => f.type === type)
}

function newClient (t: Test, shim: WxShim, opts: Omit<HeartClientOptions, 'wx'>): HeartClientType {
  const client = new HeartClient({ wx: shim, backoff: FAST_BACKOFF, ...opts })
  t.teardown(() => {
    client.close()
    shim.destroy()
  })
  return client
}

/** One server for the tests that restart nothing; each of them watches a user of its own. */
const server = await startServer(t, { REDIS_URL: (await sharedRedis()).url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY })

each('requests: subscribe and get resolve, error frames reject with their code, unsubscribe stops the callbacks', async (t, f) => {
  const u = f.user('requests')
  const shim = f.shim()
  const states: string[] = []
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u), onStateChange: (s) => states.push(s) })
  t.equal(client.state, 'idle')
  await t.rejects(client.get(u), { code: 'not_connected' }, 'get before connect() fails at once')
  const seen = new Seen()
  const subscribed = client.subscribe(u, seen.add)
  client.connect()
  t.same(await within(subscribed, 5000, 'subscribe'), { current: null }, 'a subscribe made before connect() is sent once the socket opens')
  t.same(states, ['connecting', 'open'])
  t.match(shim.last.header.Authorization, /^Bearer ey/, 'the token goes in the Authorization header')
  t.same(await within(client.get(u), 5000, 'get'), { bpm: null, ts: null }, 'get of a user without readings')

  const id = await post(server, u, 72)
  t.ok(await seen.count(1), 'the reading arrives')
  t.match(seen.readings[0], { userId: u, id, bpm: 72, ts: Number })
  t.match(await within(client.get(u), 5000, 'get'), { bpm: 72, ts: Number })
  t.match(await within(client.subscribe(u, seen.add), 5000, 'subscribe'), { current: { bpm: 72 } }, 'subscribing again answers with the current value')

  await t.rejects(client.get('stranger'), { code: 'forbidden' }, 'an error frame rejects the request with its code')
  await t.rejects(client.subscribe('stranger', () => t.fail('no reading of a refused subscription')), { code: 'forbidden' })
  await t.rejects(client.refresh('not-a-jwt'), { code: 'unauthorized' }, 'a refused refresh')
  // The client lives in a context of its own: its TypeError is not this realm's.
  await t.rejects(client.subscribe(u, undefined as never), { name: 'TypeError' })

  await within(client.unsubscribe(u), 5000, 'unsubscribe')
  await post(server, u, 73)
  await sleep(300)
  t.equal(seen.readings.length, 1, 'no reading after unsubscribe')

  // A reconnect resubscribes what is still subscribed, and only that.
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  shim.last.drop()
  t.ok(await eventually(() => shim.tasks.length === 2 && client.state === 'open', 5000), 'reconnected after the drop')
  t.ok(await eventually(() => sentFrames(shim, 1, 'subscribe').length === 1, 2000))
  t.same(sentFrames(shim, 1, 'subscribe').map((f) => f.userId), [u], 'the refused and the unsubscribed users are not resubscribed')
  t.equal(shim.last.header.Authorization, shim.tasks[0].header.Authorization, 'the refused refresh did not replace the token')
  client.close()
  t.equal(client.state, 'closed')
  await t.rejects(client.get(u), { code: 'closed' })
})

each('a server restart (1001): the client comes back on its own and gets what was posted meanwhile, once each, in order', async (t, f) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const env = { REDIS_URL: redis.url, INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'c:' }
  const a = await startServer(t, env)
  // The device keeps posting through another instance while the client's instance restarts.
  const b = await startServer(t, env)
  const shim = f.shim()
  const states: string[] = []
  const client = newClient(t, shim, { url: wsUrl(a), token: token('u1'), onStateChange: (s) => states.push(s) })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe('u1', seen.add), 5000, 'subscribe')
  const posted: string[] = []
  for (let i = 0; i < 3; i++) posted.push(await post(b, 'u1', 60 + i))
  t.ok(await seen.count(3), 'live before the restart')

  const exited = a.stop('SIGTERM')
  // While A drains (its sockets still open), then while it is gone.
  posted.push(await post(b, 'u1', 63))
  t.equal(await within(exited, 10000, 'A exits'), 0)
  t.equal(shim.tasks[0].closed?.code, 1001, 'the socket was closed with 1001')
  const lastBefore = seen.ids.at(-1)
  for (let i = 0; i < 3; i++) posted.push(await post(b, 'u1', 64 + i))
  await sleep(200)
  t.not(client.state, 'open')

  const a2 = await startServer(t, { ...env, PORT: String(a.port) })
  t.equal(a2.port, a.port)
  t.ok(await eventually(() => client.state === 'open', 5000), 'reconnected to the new instance')
  for (let i = 0; i < 2; i++) posted.push(await post(b, 'u1', 67 + i))
  t.ok(await seen.count(posted.length), 'every reading arrived')
  await sleep(200)
  t.same(seen.ids, posted, 'no gap, no duplicate, in order')
  const resubscribe = sentFrames(shim, shim.tasks.length - 1, 'subscribe')
  t.match(resubscribe, [{ userId: 'u1', since: lastBefore }], 'resubscribed from the last reading delivered before the restart')
  t.ok(states.includes('reconnecting'))
})

each('a Redis restart: the socket stays, requests fail with unavailable meanwhile, readings flow again after it', async (t, f) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const own = await startServer(t, { REDIS_URL: redis.url, INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'r:' })
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(own), token: token('u1') })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe('u1', seen.add), 5000, 'subscribe')
  const posted = [await post(own, 'u1', 70), await post(own, 'u1', 71)]
  t.ok(await seen.count(2))

  await redis.stop()
  await t.rejects(within(client.get('u1'), 9000, 'get'), { code: 'unavailable' }, 'the server answers unavailable while Redis is down')
  await redis.start()
  let recovered: { status: number, id?: string } = { status: 0 }
  const deadline = Date.now() + 10000
  while (Date.now() < deadline && recovered.status !== 202) {
    recovered = await postReading(own, KEY, 'u1', 72, 3000)
    if (recovered.status !== 202) await sleep(50)
  }
  t.equal(recovered.status, 202, 'ingest works again')
  posted.push(recovered.id as string)
  for (let i = 0; i < 3; i++) posted.push(await post(own, 'u1', 73 + i))
  t.ok(await seen.count(posted.length, 8000), 'readings after the restart arrive')
  await sleep(200)
  t.same(seen.ids, posted, 'each once, in order')
  t.equal(shim.tasks.length, 1, 'the client kept its socket')
  t.equal(client.state, 'open')
})

each('token expiry (4001): onTokenExpired gives a new token, the client reconnects with it and misses nothing', async (t, f) => {
  const u = f.user('expiry')
  const shim = f.shim()
  const issued: string[] = []
  const client = newClient(t, shim, {
    url: wsUrl(server),
    token: token(u, { ttlS: 2 }),
    async onTokenExpired () {
      issued.push(token(u, { claims: { n: issued.length } }))
      return issued[issued.length - 1]
    }
  })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  // A device posting every 100 ms across the expiry.
  const posted: string[] = []
  let posting = true
  const device = (async () => {
    for (let bpm = 60; posting; bpm = bpm === 200 ? 60 : bpm + 1) {
      posted.push(await post(server, u, bpm))
      await sleep(100)
    }
  })()
  // The server closes with 4001 at exp plus its clock tolerance (JWT_CLOCK_TOLERANCE_S, 5 s by default).
  t.ok(await eventually(() => issued.length === 1 && client.state === 'open' && shim.tasks.length === 2, 12000), 'renewed and reconnected')
  t.equal(shim.tasks[0].closed?.code, 4001, 'the server closed the first socket with 4001')
  t.equal(shim.tasks[1].header.Authorization, `Bearer ${issued[0]}`, 'the new socket carries the new token')
  await sleep(500)
  posting = false
  await device
  t.ok(await seen.count(posted.length), 'every reading arrived')
  await sleep(200)
  t.same(seen.ids, posted, 'no gap, no duplicate across the token change')
})

each('refresh() before expiry keeps the same socket; the refreshed token is used for later reconnects', async (t, f) => {
  const u = f.user('refresh')
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u, { ttlS: 2 }), onTokenExpired: () => t.fail('no expiry') as never })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  const fresh = token(u)
  const { exp } = await within(client.refresh(fresh), 5000, 'refresh')
  t.ok(exp > Date.now() / 1000 + 3000, 'the server answers with the new exp')
  await sleep(2500)
  t.equal(shim.tasks.length, 1)
  t.equal(shim.tasks[0].closed, null, 'still the same socket past the first token\'s expiry')
  const id = await post(server, u, 80)
  t.ok(await seen.count(1))
  t.same(seen.ids, [id])
  shim.last.drop()
  t.ok(await eventually(() => shim.tasks.length === 2 && client.state === 'open', 5000))
  t.equal(shim.last.header.Authorization, `Bearer ${fresh}`)
})

each('a token that expired while the app was hidden is renewed before reconnecting, not after a refusal', async (t, f) => {
  const u = f.user('hidden')
  const shim = f.shim()
  let renewed = 0
  const first = token(u, { ttlS: 2 })
  const client = newClient(t, shim, { url: wsUrl(server), token: first, onTokenExpired: () => { renewed++; return token(u) } })
  client.connect()
  t.ok(await eventually(() => client.state === 'open', 5000))
  shim.hide()
  const { exp } = JSON.parse(Buffer.from(first.split('.')[1], 'base64url').toString()) as { exp: number }
  await sleep(exp * 1000 - Date.now() + 100)
  shim.show()
  t.ok(await eventually(() => client.state === 'open', 5000))
  t.equal(renewed, 1)
  t.equal(shim.tasks.length, 2, 'one connection with the new token, no refused attempt')
})

each('a dropped network (1006): the client retries with backoff and fills the gap with since', async (t, f) => {
  const u = f.user('dropped')
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u) })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  const posted = [await post(server, u, 90)]
  t.ok(await seen.count(1))

  shim.networkDown()
  t.ok(await eventually(() => shim.tasks[0].closed !== null, 2000))
  t.equal(shim.tasks[0].closed?.code, 1006)
  posted.push(await post(server, u, 91), await post(server, u, 92))
  await sleep(600)
  t.ok(shim.tasks.length > 2, `retried while offline (${shim.tasks.length - 1} attempts)`)
  t.equal(client.state, 'reconnecting')
  shim.networkUp()
  t.ok(await eventually(() => client.state === 'open', 5000), 'back once the network is')
  posted.push(await post(server, u, 93))
  t.ok(await seen.count(posted.length))
  await sleep(200)
  t.same(seen.ids, posted)
})

each('a silent network: application pings keep a healthy socket, and a dead one is given up after deadAfterMs', async (t, f) => {
  const u = f.user('silent')
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u), pingIntervalMs: 150, deadAfterMs: 1000 })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  await sleep(2000)
  t.equal(shim.tasks.length, 1, 'an idle socket answering pings is not mistaken for a dead one')
  t.ok(sentFrames(shim, 0, 'ping').length >= 6, 'pings are sent every pingIntervalMs')
  const posted = [await post(server, u, 100)]
  t.ok(await seen.count(1))

  shim.stall()
  const pending = client.get(u)
  posted.push(await post(server, u, 101), await post(server, u, 102))
  await t.rejects(within(pending, 3000, 'get'), { code: 'disconnected' }, 'a request on the dead socket fails when it is given up')
  t.ok(await eventually(() => shim.tasks.length === 2 && client.state === 'open', 3000), 'reconnected')
  const dead = shim.tasks[0]
  t.equal(dead.closedByClient?.code, 1000, 'the dead socket was closed by the client')
  t.ok((dead.closedByClient?.at ?? 0) - dead.receivedAt >= 990, 'not before deadAfterMs without a frame')
  posted.push(await post(server, u, 103))
  t.ok(await seen.count(posted.length))
  await sleep(200)
  t.same(seen.ids, posted, 'what the dead socket swallowed was replayed')
})

each('a request without an answer times out', async (t, f) => {
  const u = f.user('timeout')
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u), requestTimeoutMs: 300, deadAfterMs: 5000 })
  client.connect()
  t.ok(await eventually(() => client.state === 'open', 5000))
  shim.stall()
  await t.rejects(within(client.get(u), 3000, 'get'), { code: 'timeout' })
})

each('app hide and show: the socket closes in the background and the readings of that time arrive on show', async (t, f) => {
  const u = f.user('hide')
  const shim = f.shim()
  const states: string[] = []
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u), onStateChange: (s) => states.push(s) })
  const seen = new Seen()
  client.connect()
  client.connect()
  t.same(shim.appListeners, { hide: 1, show: 1 }, 'registered once')
  await within(client.subscribe(u, seen.add), 5000, 'subscribe')
  const posted = [await post(server, u, 110)]
  t.ok(await seen.count(1))

  shim.hide()
  t.equal(client.state, 'idle')
  t.ok(await eventually(() => shim.tasks[0].closed !== null, 2000))
  t.match(shim.tasks[0].closedByClient, { code: 1000, reason: 'app hidden' })
  posted.push(await post(server, u, 111), await post(server, u, 112))
  const whileHidden = client.get(u)
  await sleep(400)
  t.equal(shim.tasks.length, 1, 'no connection attempt while hidden')

  shim.show()
  t.ok(await eventually(() => client.state === 'open', 5000))
  t.match(await within(whileHidden, 5000, 'get'), { bpm: 112 }, 'a get while hidden is answered after show')
  posted.push(await post(server, u, 113))
  t.ok(await seen.count(posted.length))
  await sleep(200)
  t.same(seen.ids, posted, 'the background readings, then live ones, once each')
  t.same(states, ['connecting', 'open', 'idle', 'reconnecting', 'open'])

  client.close()
  t.same(shim.appListeners, { hide: 0, show: 0 }, 'close() unregisters')
  shim.show()
  await sleep(200)
  t.equal(shim.tasks.length, 2, 'a show after close() does nothing')
})

each('a withdrawn share: the revoked frame calls onRevoked and ends the subscription', async (t, f) => {
  const [ownerId, viewerId] = [f.user('owner'), f.user('viewer')]
  const owner = { authorization: `Bearer ${token(ownerId)}` }
  t.equal((await fetch(`${server.url}/shares/${viewerId}`, { method: 'PUT', headers: owner, signal: AbortSignal.timeout(3000) })).status, 200)
  const shim = f.shim()
  const revoked: string[] = []
  const client = newClient(t, shim, { url: wsUrl(server), token: token(viewerId), onRevoked: (u) => revoked.push(u) })
  const seen = new Seen()
  client.connect()
  await within(client.subscribe(ownerId, seen.add), 5000, 'subscribe')
  await post(server, ownerId, 75)
  t.ok(await seen.count(1))
  t.equal((await fetch(`${server.url}/shares/${viewerId}`, { method: 'DELETE', headers: owner, signal: AbortSignal.timeout(3000) })).status, 204)
  t.ok(await eventually(() => revoked.length === 1, 3000))
  t.same(revoked, [ownerId])
  await post(server, ownerId, 76)
  await sleep(300)
  t.equal(seen.readings.length, 1, 'nothing after the revocation')
})

t.test('the global wx of a mini program is used when none is passed', async (t) => {
  const u = 'global'
  const shim = new WxShim()
  t.teardown(() => shim.destroy())
  const { HeartClient: WithGlobal } = loadClient({ wx: shim })
  const client = new WithGlobal({ url: wsUrl(server), token: token(u) })
  t.teardown(() => client.close())
  client.connect()
  t.same(await within(client.get(u), 5000, 'get'), { bpm: null, ts: null })
  t.equal(shim.tasks.length, 1)
  t.throws(() => new HeartClient({ url: wsUrl(server), token: token(u) }), { name: 'TypeError', message: /wx/ }, 'without any wx it says so')
})

/** A WebSocket server the test scripts, for what the real one does too rarely to wait for. */
async function scriptedServer (t: Test): Promise<{ wss: WebSocketServer, url: string }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise((resolve) => wss.once('listening', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    for (const ws of wss.clients) ws.terminate()
    wss.close(() => resolve())
  }))
  return { wss, url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/heart/current` }
}

each('an error after subscribed (a replay the store cut short) is resumed with since', async (t, f) => {
  const { wss, url } = await scriptedServer(t)
  const subscribes: any[] = []
  const send = (ws: { send: (s: string) => void }, frame: object): void => ws.send(JSON.stringify(frame))
  wss.on('connection', (ws) => ws.on('message', (data) => {
    const f = JSON.parse(String(data))
    if (f.type !== 'subscribe') return
    subscribes.push(f)
    if (subscribes.length === 1) {
      send(ws, { type: 'subscribed', userId: 'u1', current: null, reqId: f.reqId })
      send(ws, { type: 'reading', userId: 'u1', id: '5-0', bpm: 70, ts: 1 })
      send(ws, { type: 'error', code: 'unavailable', message: 'heart-rate store is unavailable, try again shortly', reqId: f.reqId })
    } else {
      send(ws, { type: 'subscribed', userId: 'u1', current: { bpm: 70, ts: 1 }, reqId: f.reqId })
      send(ws, { type: 'reading', userId: 'u1', id: '5-0', bpm: 70, ts: 1 })
      send(ws, { type: 'reading', userId: 'u1', id: '6-0', bpm: 71, ts: 2 })
    }
  }))
  const shim = f.shim()
  const errors: unknown[] = []
  const client = newClient(t, shim, { url, token: token('u1'), onError: (err) => errors.push(err) })
  const seen = new Seen()
  client.connect()
  t.same(await within(client.subscribe('u1', seen.add), 5000, 'subscribe'), { current: null })
  t.ok(await eventually(() => seen.readings.length === 2, 3000), 'the subscription came back')
  t.match(subscribes, [{ userId: 'u1' }, { userId: 'u1', since: '5-0' }])
  t.same(seen.ids, ['5-0', '6-0'], 'the reading sent again is dropped')
  t.same(errors, [], 'a retried subscription is not an error for the app')
  t.equal(shim.tasks.length, 1, 'on the same socket')
})

each('close codes: 1001 reconnects within 2 s, 1013 backs off, 1008 and 1009 back off to the max, 4001 without onTokenExpired closes', async (t, f) => {
  const codes = [1001, 1013, 1008, 1009, 4001]
  const connections: Array<{ at: number, code: number }> = []
  const { wss, url } = await scriptedServer(t)
  wss.on('connection', (ws) => {
    const code = codes[connections.length] ?? 1000
    connections.push({ at: Date.now(), code })
    ws.close(code, 'scripted')
  })
  const shim = f.shim()
  const errors: string[] = []
  const disconnects: DisconnectInfo[] = []
  const client = newClient(t, shim, {
    url,
    token: token('u1'),
    backoff: { initialMs: 100, maxMs: 1000 },
    onDisconnect: (info) => disconnects.push(info),
    onError: (err) => errors.push((err as { code?: string }).code ?? err.message)
  })
  client.connect()
  t.ok(await eventually(() => client.state === 'closed', 8000), 'the client closed itself after the 4001')
  await sleep(300)
  t.same(connections.map((c) => c.code), codes, 'no connection after the 4001')
  const gap = (i: number): number => connections[i + 1].at - connections[i].at
  // Lower bounds are what the client promises; upper ones leave room for a loaded machine.
  t.ok(gap(0) <= 2250, `1001: within the 2 s spread (${gap(0)} ms)`)
  t.ok(gap(1) >= 390 && gap(1) <= 2000, `1013: backed off (${gap(1)} ms)`)
  t.ok(gap(2) >= 490 && gap(2) <= 2500, `1008: half the max or more (${gap(2)} ms)`)
  t.ok(gap(3) >= 490 && gap(3) <= 2500, `1009: half the max or more (${gap(3)} ms)`)
  t.same(errors, ['token_expired'])
  t.match(disconnects, codes.map((code) => ({ code, reason: 'scripted', opened: true })), 'onDisconnect hears of every close, with its code and reason')
  t.same(disconnects.map((d) => d.retryInMs === null), [false, false, false, false, true], 'with when it reconnects, and null for the 4001 it does not')
  t.ok((disconnects[0].retryInMs ?? -1) >= 0 && (disconnects[0].retryInMs ?? 3000) <= 2000, `1001: a random delay of 0-2 s (${disconnects[0].retryInMs} ms)`)
})

each('since: a new subscription starts after the given id; a malformed one is refused', async (t, f) => {
  const u = f.user('since')
  const ids = [await post(server, u, 70), await post(server, u, 71), await post(server, u, 72)]
  const shim = f.shim()
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u) })
  client.connect()
  await t.rejects(client.subscribe(u, () => {}, { since: 'yesterday' }), { name: 'TypeError', message: /history id/ })
  const seen = new Seen()
  t.match(await within(client.subscribe(u, seen.add, { since: ids[0] }), 5000, 'subscribe'), { current: { bpm: 72 } })
  t.ok(await seen.count(2))
  t.match(sentFrames(shim, 0, 'subscribe'), [{ userId: u, since: ids[0] }])
  const later = await post(server, u, 73)
  t.ok(await seen.count(3))
  await sleep(200)
  t.same(seen.ids, [ids[1], ids[2], later], 'the readings after since, then live ones')
})

t.test('a refused handshake through the ws adapter: 401 is final, with its status and body; 503 is retried', async (t) => {
  const f = FLAVOURS[1]
  const shim = f.shim()
  const errors: HeartClientError[] = []
  const disconnects: DisconnectInfo[] = []
  const bad = token(f.user('refused'), { secret: 'another-secret-of-at-least-32-characters' })
  const client = newClient(t, shim, { url: wsUrl(server), token: bad, onError: (err) => errors.push(err as HeartClientError), onDisconnect: (info) => disconnects.push(info) })
  client.connect()
  t.ok(await eventually(() => client.state === 'closed', 5000), 'the client closed itself')
  t.match(errors, [{ code: 'refused', status: 401, body: /invalid token/ }])
  t.match(disconnects, [{ code: 1006, opened: false, status: 401, body: /invalid token/, retryInMs: null }])
  await sleep(200)
  t.equal(shim.tasks.length, 1, 'no second attempt')

  // A draining instance answers 503: worth another try.
  let attempts = 0
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, verifyClient: (_info, cb) => cb(++attempts > 2, 503, 'Service Unavailable') })
  await new Promise((resolve) => wss.once('listening', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    for (const ws of wss.clients) ws.terminate()
    wss.close(() => resolve())
  }))
  const retried: DisconnectInfo[] = []
  const shim2 = f.shim()
  const again = newClient(t, shim2, { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/heart/current`, token: token('u1'), onDisconnect: (info) => retried.push(info) })
  again.connect()
  t.ok(await eventually(() => again.state === 'open', 5000), 'connected on the third attempt')
  t.match(retried, [{ status: 503, retryInMs: Number }, { status: 503, retryInMs: Number }])
})

t.test('the browser adapter sends the token as ?access_token=, never as a header', async (t) => {
  const shim = FLAVOURS[2].shim()
  const u = FLAVOURS[2].user('query')
  const client = newClient(t, shim, { url: wsUrl(server), token: token(u) })
  client.connect()
  t.same(await within(client.get(u), 5000, 'get'), { bpm: null, ts: null })
  const ws = shim.last.ws as unknown as { url: string }
  t.match(ws.url, /\/heart\/current\?access_token=ey/)
})
