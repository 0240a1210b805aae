import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import { WebSocket } from 'ws'
import { RefusalCounter } from '../plugins/rate-limit.js'
import { Frames, TEST_SECRET, bearer, build, buildWithRedis, eventually, sleep, token, uniquePrefix } from './helper.js'

/*
 * What limits a socket on /heart/current: its token's lifetime (close 4001, `refresh`), sockets
 * per user (429) and per instance (503), allowed origins (403), frames per second (rate_limited,
 * then 1008), refused upgrades per client (429) and plain GETs (426). None of these involve the store, so they run on the embedded one, except the
 * test showing that the per-user socket count is per instance.
 */

const PATH = '/heart/current'
const OPEN = 1

/** Opens a socket with a given token and extra headers; terminated when the test ends. */
async function connect (t: Test, app: FastifyInstance, jwt: string, headers: Record<string, string> = {}): Promise<Frames> {
  const frames = new Frames(await app.injectWS(PATH, { headers: { authorization: `Bearer ${jwt}`, ...headers } }))
  t.teardown(() => frames.ws.terminate())
  return frames
}

/** The `exp` claim of a token (seconds since the epoch). */
function expOf (jwt: string): number {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).exp
}

/** Resolves with the close code and when it came, or rejects when the socket is still open after `ms`. */
async function closedWithin (frames: Frames, ms: number): Promise<{ code: number, at: number }> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms)
  })
  try {
    const code = await Promise.race([frames.closed, timeout])
    return { code, at: Date.now() }
  } finally {
    clearTimeout(timer)
  }
}

const nowS = (): number => Math.floor(Date.now() / 1000)
/** The refresh tests time the old token's expiry: exp itself, with no clock tolerance on top. */
const NO_TOLERANCE = { JWT_CLOCK_TOLERANCE_S: '0' }

t.test('token lifetime on an open socket', async (t) => {
  t.test('a socket is closed with 4001 "token expired" when its token reaches exp plus JWT_CLOCK_TOLERANCE_S', async (t) => {
    const app = await build(t, { JWT_CLOCK_TOLERANCE_S: '1' })
    const jwt = token('u1', { ttlS: 2 })
    const frames = await connect(t, app, jwt)
    let reason = ''
    frames.ws.once('close', (_code, why) => { reason = String(why) })
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'open and answering before exp')
    // Accepted until then: the upgrade would accept the same token until that moment too.
    const endMs = expOf(jwt) * 1000 + 1000
    const { code, at } = await closedWithin(frames, endMs - Date.now() + 1500)
    t.equal(code, 4001)
    t.equal(reason, 'token expired')
    t.ok(at >= endMs - 50, `not before exp + 1 s (closed ${at - endMs} ms from it)`)
    t.ok(at <= endMs + 1000, `soon after exp + 1 s (closed ${at - endMs} ms from it)`)
  })

  t.test('refresh with a new token for the same user answers refreshed with its exp and the socket outlives the old expiry', async (t) => {
    const app = await build(t, NO_TOLERANCE)
    const old = token('u1', { ttlS: 2 })
    const frames = await connect(t, app, old)
    const fresh = token('u1', { ttlS: 60 })
    t.same(await frames.ask({ type: 'refresh', token: fresh, reqId: 'r1' }), { type: 'refreshed', exp: expOf(fresh), reqId: 'r1' })
    await sleep(expOf(old) * 1000 - Date.now() + 500)
    t.equal(frames.closeCode, null, 'still open half a second past the old exp')
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'and answering')
  })

  t.test('refresh with a token for another user answers unauthorized and the old expiry still closes the socket with 4001', async (t) => {
    const app = await build(t, NO_TOLERANCE)
    const old = token('u1', { ttlS: 2 })
    const frames = await connect(t, app, old)
    t.match(await frames.ask({ type: 'refresh', token: token('u2', { ttlS: 60 }), reqId: 'r1' }),
      { type: 'error', code: 'unauthorized', message: /another user/, reqId: 'r1' })
    const { code, at } = await closedWithin(frames, expOf(old) * 1000 - Date.now() + 1500)
    t.equal(code, 4001)
    t.ok(at <= expOf(old) * 1000 + 1000, 'at the old expiry')
  })

  t.test('refresh with a token signed with another secret answers unauthorized and the old expiry stands', async (t) => {
    const app = await build(t, NO_TOLERANCE)
    const old = token('u1', { ttlS: 2 })
    const frames = await connect(t, app, old)
    const forged = token('u1', { ttlS: 60, secret: 'another-secret-of-at-least-32-characters!' })
    t.match(await frames.ask({ type: 'refresh', token: forged }), { type: 'error', code: 'unauthorized', message: /invalid token/ })
    t.equal((await closedWithin(frames, expOf(old) * 1000 - Date.now() + 1500)).code, 4001)
  })

  t.test('refresh with an expired token answers unauthorized', async (t) => {
    const app = await build(t)
    const frames = await connect(t, app, token('u1'))
    const expired = createSigner({ key: TEST_SECRET, algorithm: 'HS256' })({ sub: 'u1', iat: nowS() - 120, exp: nowS() - 60 })
    t.match(await frames.ask({ type: 'refresh', token: expired }), { type: 'error', code: 'unauthorized', message: /expired/ })
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'the socket stays open on its own token')
  })

  t.test('refresh without a token, or with a token that is not a string, answers bad_request', async (t) => {
    const app = await build(t)
    const frames = await connect(t, app, token('u1'))
    for (const frame of [{ type: 'refresh' }, { type: 'refresh', token: 123 }, { type: 'refresh', token: '' }, { type: 'refresh', token: { jwt: 'x' } }]) {
      t.match(await frames.ask({ ...frame, reqId: 'b' }), { type: 'error', code: 'bad_request', message: /token/, reqId: 'b' }, JSON.stringify(frame))
    }
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'the socket stays open')
  })

  t.test('a socket opened with an already expired token is refused at the upgrade with 401', async (t) => {
    const app = await build(t)
    // Past the default clock tolerance (5 s).
    const expired = createSigner({ key: TEST_SECRET, algorithm: 'HS256' })({ sub: 'u1', iat: nowS() - 120, exp: nowS() - 10 })
    await t.rejects(app.injectWS(PATH, { headers: { authorization: `Bearer ${expired}` } }), { message: 'Unexpected server response: 401' })
  })
})

t.test('MAX_CONNECTIONS_PER_USER counts open sockets per user on this instance', async (t) => {
  t.test('the third socket of a user gets 429 before the upgrade; another user still connects; a closed socket frees its place', async (t) => {
    const app = await build(t, { MAX_CONNECTIONS_PER_USER: '2' })
    const first = await connect(t, app, token('u1'))
    await connect(t, app, token('u1'))
    await t.rejects(app.injectWS(PATH, { headers: bearer('u1') }), { message: 'Unexpected server response: 429' })
    // A plain GET answers what the upgrade would get.
    const res = await app.inject({ method: 'GET', url: PATH, headers: bearer('u1') })
    t.equal(res.statusCode, 429)
    t.same(res.json(), { statusCode: 429, error: 'Too Many Requests', message: 'at most 2 open sockets per user' })

    const other = await connect(t, app, token('u2'))
    t.match(await other.ask({ type: 'ping' }), { type: 'pong' }, 'u2 has its own count')

    first.ws.terminate()
    t.ok(await eventually(() => app.websocketServer.clients.size === 2, 2000), 'the server saw the close')
    const again = await connect(t, app, token('u1'))
    t.match(await again.ask({ type: 'ping' }), { type: 'pong' }, 'a new socket for u1 is accepted')
    await t.rejects(app.injectWS(PATH, { headers: bearer('u1') }), { message: 'Unexpected server response: 429' }, 'and the limit holds again')
  })

  // Over real TCP: injectWS's in-memory stream never tells the server that a cleanly closed socket has gone.
  t.test('a socket the client closes with a close handshake frees its place too', async (t) => {
    const app = await build(t, { MAX_CONNECTIONS_PER_USER: '1' })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const url = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}${PATH}`
    const dial = async (): Promise<Frames> => {
      const ws = new WebSocket(url, { headers: bearer('u1') })
      t.teardown(() => ws.terminate())
      await once(ws, 'open')
      return new Frames(ws)
    }
    const first = await dial()
    await t.rejects(dial(), { message: 'Unexpected server response: 429' }, 'the one place is taken')
    first.ws.close(1000)
    t.equal((await closedWithin(first, 2000)).code, 1000)
    t.ok(await eventually(() => app.websocketServer.clients.size === 0, 2000), 'the server saw the close')
    const again = await dial()
    t.match(await again.ask({ type: 'ping' }), { type: 'pong' }, 'a new socket is accepted')
  })

  t.test('simultaneous upgrades cannot pass the limit together', async (t) => {
    const app = await build(t, { MAX_CONNECTIONS_PER_USER: '2' })
    // injectWS starts all six in one tick, so their checks interleave before any socket opens.
    const results = await Promise.allSettled(Array.from({ length: 6 }, async () => await app.injectWS(PATH, { headers: bearer('u1') })))
    const opened = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
    t.equal(opened.length, 2, 'exactly the limit got through')
    t.ok(results.every((r) => r.status === 'fulfilled' || /429/.test(String(r.reason))), 'the others got 429')
    for (const ws of opened) ws.terminate()
    t.ok(await eventually(() => app.websocketServer.clients.size === 0, 2000), 'the server saw them go')
    const again = await Promise.allSettled([1, 2, 3].map(async () => await app.injectWS(PATH, { headers: bearer('u1') })))
    t.equal(again.filter((r) => r.status === 'fulfilled').length, 2, 'both places are free again, and only those')
    for (const r of again) if (r.status === 'fulfilled') r.value.terminate()
  })

  t.test('the count is per instance, not across instances: with the limit reached on instance A, instance B accepts the user', async (t) => {
    const prefix = uniquePrefix()
    const a = await buildWithRedis(t, { MAX_CONNECTIONS_PER_USER: '2', HEART_KEY_PREFIX: prefix })
    const b = await buildWithRedis(t, { MAX_CONNECTIONS_PER_USER: '2', HEART_KEY_PREFIX: prefix })
    await connect(t, a, token('u1'))
    await connect(t, a, token('u1'))
    await t.rejects(a.injectWS(PATH, { headers: bearer('u1') }), { message: 'Unexpected server response: 429' }, 'A is full for u1')
    const onB = await connect(t, b, token('u1'))
    t.match(await onB.ask({ type: 'ping' }), { type: 'pong' }, 'B counts its own sockets only')
  })
})

t.test('ALLOWED_ORIGINS', async (t) => {
  const ORIGINS = 'https://a.example,https://b.example'

  t.test('an upgrade with an Origin not in the list gets 403 before the token is even looked at', async (t) => {
    const app = await build(t, { ALLOWED_ORIGINS: ORIGINS })
    await t.rejects(app.injectWS(PATH, { headers: { ...bearer('u1'), origin: 'https://evil.example' } }), { message: 'Unexpected server response: 403' })
    const res = await app.inject({ method: 'GET', url: PATH, headers: { origin: 'https://evil.example' } })
    t.equal(res.statusCode, 403, 'without a token too')
    t.same(res.json(), { statusCode: 403, error: 'Forbidden', message: 'origin not allowed' })
    await t.rejects(app.injectWS(PATH, { headers: { ...bearer('u1'), origin: 'https://a.example.evil.example' } }),
      { message: 'Unexpected server response: 403' }, 'origins are matched exactly, not by prefix')
  })

  t.test('an upgrade with an Origin in the list is accepted', async (t) => {
    const app = await build(t, { ALLOWED_ORIGINS: ORIGINS })
    for (const origin of ['https://a.example', 'https://b.example']) {
      const frames = await connect(t, app, token('u1'), { origin })
      t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, origin)
    }
  })

  t.test('an upgrade without Origin (mini programs, devices) is accepted', async (t) => {
    const app = await build(t, { ALLOWED_ORIGINS: ORIGINS })
    const frames = await connect(t, app, token('u1'))
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  })

  t.test('spaces after the commas in the list are ignored', async (t) => {
    const app = await build(t, { ALLOWED_ORIGINS: 'https://a.example, https://b.example' })
    const frames = await connect(t, app, token('u1'), { origin: 'https://b.example' })
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  })

  t.test('without ALLOWED_ORIGINS any Origin is accepted', async (t) => {
    const app = await build(t)
    const frames = await connect(t, app, token('u1'), { origin: 'https://evil.example' })
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  })
})

t.test('MESSAGE_RATE_LIMIT', async (t) => {
  t.test('a burst over the limit gets rate_limited error frames, the socket stays open, and after a quiet second it is answered again', async (t) => {
    const app = await build(t, { MESSAGE_RATE_LIMIT: '5' })
    const frames = await connect(t, app, token('u1'))
    const neighbour = await connect(t, app, token('u1'))
    for (let i = 0; i < 20; i++) frames.ws.send(JSON.stringify({ type: 'ping' }))
    const answers = []
    for (let i = 0; i < 20; i++) answers.push(await frames.json(2000))
    const pongs = answers.filter((f) => f.type === 'pong').length
    const limited = answers.filter((f) => f.type === 'error' && f.code === 'rate_limited')
    t.equal(pongs + limited.length, 20, 'every frame is answered, by a pong or by rate_limited')
    t.ok(pongs >= 5 && pongs <= 6, `about 5 pongs (${pongs})`)
    t.ok(limited.length >= 10, `the rest rate_limited (${limited.length})`)
    t.match(limited[0], { message: /5 frames per second/ })
    t.equal(frames.ws.readyState, OPEN, 'still open')
    t.match(await neighbour.ask({ type: 'ping' }), { type: 'pong' }, 'the limit is per socket: another socket of the same user is answered')
    await sleep(1000)
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'answered again after a quiet second')
  })

  t.test('a flood sustained for 5 s closes the socket with 1008', async (t) => {
    const app = await build(t, { MESSAGE_RATE_LIMIT: '5' })
    const frames = await connect(t, app, token('u1'))
    let reason = ''
    frames.ws.once('close', (_code, why) => { reason = String(why) })
    const started = Date.now()
    // 50 frames a second, ten times the limit.
    const flood = setInterval(() => {
      if (frames.ws.readyState === OPEN) frames.ws.send('{"type":"ping"}')
    }, 20)
    t.teardown(() => clearInterval(flood))
    const { code, at } = await closedWithin(frames, 8000)
    clearInterval(flood)
    t.equal(code, 1008)
    t.match(reason, /rate limit/)
    t.ok(at - started >= 4900, `not before 5 s of flood (${at - started} ms)`)
    t.ok(at - started <= 7000, `soon after (${at - started} ms)`)
  })
})

t.test('UPGRADE_RATE_LIMIT counts refused upgrades only', async (t) => {
  // injectWS requests have no socket address, so every injected upgrade counts as one client ('unknown').
  t.test('successful upgrades never count: 10 sockets from one client with the limit at 3', async (t) => {
    const app = await build(t, { UPGRADE_RATE_LIMIT: '3' })
    for (let i = 0; i < 10; i++) {
      const frames = await connect(t, app, token(`u${i}`))
      t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, `socket ${i + 1}`)
    }
  })

  t.test('after 3 refusals (401, 403, and 429 for the per-user cap) the next upgrade gets 429 with retry-after, even with a valid token', async (t) => {
    const app = await build(t, { UPGRADE_RATE_LIMIT: '3', MAX_CONNECTIONS_PER_USER: '1', ALLOWED_ORIGINS: 'https://a.example' })
    await connect(t, app, token('u1'))
    await t.rejects(app.injectWS(PATH), { message: 'Unexpected server response: 401' }, 'no token')
    await t.rejects(app.injectWS(PATH, { headers: { ...bearer('u2'), origin: 'https://evil.example' } }), { message: 'Unexpected server response: 403' }, 'bad origin')
    await t.rejects(app.injectWS(PATH, { headers: bearer('u1') }), { message: 'Unexpected server response: 429' }, 'u1 holds its one socket')
    await t.rejects(app.injectWS(PATH, { headers: bearer('u3') }), { message: 'Unexpected server response: 429' }, 'a valid token is now refused too')
    t.equal(app.websocketServer.clients.size, 1, 'only the first socket opened')
  })

  t.test('the limit is per client address: IPv6 by /64, IPv4-mapped as IPv4; the 429 body says when to retry', async (t) => {
    const app = await build(t, { UPGRADE_RATE_LIMIT: '2' })
    const get = async (remoteAddress: string, headers: Record<string, string> = {}): Promise<{ status: number, body: any, retry: unknown }> => {
      const res = await app.inject({ method: 'GET', url: PATH, headers, remoteAddress })
      return { status: res.statusCode, body: res.json(), retry: res.headers['retry-after'] }
    }
    for (const address of ['2001:db8:1:2::1', '2001:db8:1:2:ffff::9']) t.equal((await get(address)).status, 401, address)
    const refused = await get('2001:db8:1:2::77', bearer('u1'))
    t.equal(refused.status, 429, 'a third address in the same /64 is the same client')
    t.match(refused.body, { statusCode: 429, error: 'Too Many Requests', message: /at most 2 refused attempts per minute, retry in \d+ s/ })
    t.ok(Number(refused.retry) > 0 && Number(refused.retry) <= 60, `retry-after ${String(refused.retry)}`)
    t.equal((await get('2001:db8:1:3::1', bearer('u1'))).status, 426, 'the next /64 is another client (426: a plain GET, not refused)')

    for (let i = 0; i < 2; i++) t.equal((await get('::ffff:10.0.0.5')).status, 401)
    t.equal((await get('10.0.0.5', bearer('u1'))).status, 429, 'an IPv4-mapped address counts as its IPv4')
    t.equal((await get('10.0.0.6', bearer('u1'))).status, 426, 'another IPv4 address is another client')
    for (let i = 0; i < 10; i++) t.equal((await app.inject({ url: '/health', remoteAddress: '10.0.0.5' })).statusCode, 200, `/health ${i + 1} is not limited`)
  })
})

t.test('RefusalCounter: counts per key in fixed windows, says when to retry, and forgets a window when the next starts', async (t) => {
  let now = 1_000_000
  const counter = new RefusalCounter(2, 60_000, () => now)
  t.equal(counter.retryAfter('a'), 0, 'no refusals yet')
  t.equal(counter.empty, true, 'empty before any refusal')
  counter.count('a')
  t.equal(counter.empty, false, 'not empty once an address was refused')
  t.equal(counter.retryAfter('a'), 0, 'one of two')
  counter.count('a')
  t.equal(counter.retryAfter('a'), 60, 'at the limit: the rest of the window')
  t.equal(counter.retryAfter('b'), 0, 'another key has its own count')
  now += 59_500
  t.equal(counter.retryAfter('a'), 1, 'half a second left rounds up to 1 s')
  now += 500
  t.equal(counter.empty, true, 'empty again when the next window starts')
  t.equal(counter.retryAfter('a'), 0, 'a new window starts from nothing')
  counter.count('a')
  t.equal(counter.retryAfter('a'), 0, 'one refusal in the new window')
})

t.test('a plain GET /heart/current (no upgrade) with a valid token gets 426 and takes no socket place', async (t) => {
  const app = await build(t, { MAX_CONNECTIONS_PER_USER: '1', MAX_CONNECTIONS: '1' })
  for (let i = 0; i < 3; i++) {
    const res = await app.inject({ method: 'GET', url: PATH, headers: bearer('u1') })
    t.equal(res.statusCode, 426)
    t.equal(res.headers.upgrade, 'websocket')
    t.same(res.json(), { statusCode: 426, error: 'Upgrade Required', message: 'not a WebSocket handshake: /heart/current needs Upgrade: websocket' })
  }
  const frames = await connect(t, app, token('u1'))
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'the user\'s one place and the instance\'s one place are still free')
})

t.test('MAX_CONNECTIONS counts sockets on this instance: past it 503 with retry-after; a closed socket frees its place', async (t) => {
  const app = await build(t, { MAX_CONNECTIONS: '2', UPGRADE_RATE_LIMIT: '1' })
  const first = await connect(t, app, token('u1'))
  await connect(t, app, token('u2'))
  for (let i = 0; i < 3; i++) {
    await t.rejects(app.injectWS(PATH, { headers: bearer(`v${i}`) }), { message: 'Unexpected server response: 503' }, `another user ${i + 1}: the instance is full`)
  }
  const res = await app.inject({ method: 'GET', url: PATH, headers: bearer('u3') })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '5')
  t.same(res.json(), { statusCode: 503, error: 'Service Unavailable', message: 'this instance holds its 2 sockets: retry on another' })
  first.ws.terminate()
  t.ok(await eventually(() => app.websocketServer.clients.size === 1, 2000), 'the server saw the close')
  const again = await connect(t, app, token('u3'))
  t.match(await again.ask({ type: 'ping' }), { type: 'pong' }, 'a place is free again; the 503s did not count as refusals')
})

t.test('simultaneous upgrades cannot pass MAX_CONNECTIONS together', async (t) => {
  const app = await build(t, { MAX_CONNECTIONS: '3' })
  const results = await Promise.allSettled(Array.from({ length: 8 }, async (_, i) => await app.injectWS(PATH, { headers: bearer(`u${i}`) })))
  const opened = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
  t.teardown(() => { for (const ws of opened) ws.terminate() })
  t.equal(opened.length, 3, 'exactly the limit got through')
  t.ok(results.every((r) => r.status === 'fulfilled' || /503/.test(String(r.reason))), 'the others got 503')
})
