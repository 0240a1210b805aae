import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import type { Env } from '../plugins/config.js'
import {
  Frames, RedisServer, bearer, build, buildWithRedis, eventually, openSocket, sharedRedis, sleep, token, uniquePrefix,
  type BuildOptions
} from './helper.js'

type Builder = (t: Test, env?: Env, opts?: BuildOptions) => Promise<FastifyInstance>

const PATH = '/heart/current'

/** The protocol must behave the same on both stores. */
const STORES: Array<{ name: string, build: Builder }> = [
  { name: 'embedded', build: async (t, env = {}, opts = {}) => await build(t, env, opts) },
  { name: 'redis', build: async (t, env = {}, opts = {}) => await buildWithRedis(t, env, opts) }
]

/** Opens a socket that is terminated when the test ends. */
async function open (t: Test, app: FastifyInstance, userId = 'u1'): Promise<Frames> {
  const frames = await openSocket(app, userId)
  t.teardown(() => frames.ws.terminate())
  return frames
}

/** Resolves with the close code, or rejects when the socket is still open after `ms`. */
async function closedWithin (frames: Frames, ms: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([frames.closed, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Sends a legacy text frame and returns the reply as text (`0` must stay the string "0"). */
async function askText (frames: Frames, text: string, ms?: number): Promise<string> {
  frames.ws.send(text)
  return await frames.next(ms)
}

async function assertStillAnswers (t: Test, frames: Frames, what: string): Promise<void> {
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, `the socket still answers after ${what}`)
}

const BAD_FRAMES: Array<[string, string | Buffer]> = [
  ['invalid JSON', '{"type":"get",'],
  ['a JSON array', '[{"type":"ping"}]'],
  ['a JSON object without type', '{}'],
  ['an unknown type', '{"type":"set","userId":"u1"}'],
  ['a non-string type', '{"type":1}'],
  ['get without userId', '{"type":"get"}'],
  ['get with userId a:b', '{"type":"get","userId":"a:b"}'],
  ['get with userId *', '{"type":"get","userId":"*"}'],
  ['get with a userId of 65 characters', JSON.stringify({ type: 'get', userId: 'x'.repeat(65) })],
  ['get with an empty userId', '{"type":"get","userId":""}'],
  ['get with a numeric userId', '{"type":"get","userId":1}'],
  ['a reqId that is an object', '{"type":"ping","reqId":{}}'],
  ['a reqId of 65 characters', JSON.stringify({ type: 'ping', reqId: 'r'.repeat(65) })],
  ['an empty reqId', '{"type":"ping","reqId":""}'],
  ['a reqId that is not an integer', '{"type":"ping","reqId":1.5}'],
  ['subscribe with a malformed since', '{"type":"subscribe","userId":"u1","since":"yesterday"}'],
  ['a binary frame', Buffer.from('u1')],
  ['a legacy text frame ..', '..'],
  ['a legacy text frame with a space', 'a b'],
  ['a legacy text frame a:b', 'a:b'],
  ['an empty text frame', ''],
  ['a JSON string', '"u1"']
]

for (const store of STORES) {
  t.test(`[${store.name}] a legacy text frame with the own user id answers 0 when there is no reading`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    t.equal(await askText(frames, 'u1'), '0')
  })

  t.test(`[${store.name}] a legacy text frame with the own user id answers the current bpm as a decimal`, async (t) => {
    const app = await store.build(t)
    await app.heartStore.append('u1', [{ bpm: 72, ts: Date.now() }])
    const frames = await open(t, app)
    t.equal(await askText(frames, 'u1'), '72')
    await app.heartStore.append('u1', [{ bpm: 101, ts: Date.now() + 1 }])
    t.equal(await askText(frames, 'u1'), '101', 'and follows newer readings')
  })

  t.test(`[${store.name}] get answers the current reading with its ts and echoes reqId`, async (t) => {
    const app = await store.build(t)
    const ts = Date.now() - 1000
    await app.heartStore.append('u1', [{ bpm: 72, ts }])
    const frames = await open(t, app)
    t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 'r1' }), { type: 'current', userId: 'u1', bpm: 72, ts, reqId: 'r1' })
  })

  t.test(`[${store.name}] get answers bpm and ts null when there is no reading`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 'r1' }), { type: 'current', userId: 'u1', bpm: null, ts: null, reqId: 'r1' })
  })

  t.test(`[${store.name}] reqId is echoed as sent, string or integer, and absent when not sent`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 'abc-1' }), { type: 'current', userId: 'u1', bpm: null, ts: null, reqId: 'abc-1' })
    t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 42 }), { type: 'current', userId: 'u1', bpm: null, ts: null, reqId: 42 })
    t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 0 }), { type: 'current', userId: 'u1', bpm: null, ts: null, reqId: 0 })
    t.same(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', userId: 'u1', bpm: null, ts: null })
    t.match(await frames.ask({ type: 'ping', reqId: 'p1' }), { type: 'pong', reqId: 'p1' })
    t.notOk('reqId' in await frames.ask({ type: 'ping' }), 'no reqId on a pong for a ping without one')
    t.match(await frames.ask({ type: 'set', reqId: 'e1' }), { type: 'error', code: 'bad_request', reqId: 'e1' }, 'echoed on an unknown type')
    t.match(await frames.ask({ type: 'get', reqId: 7 }), { type: 'error', code: 'bad_request', reqId: 7 }, 'echoed on a missing userId')
    t.match(await frames.ask({ type: 'get', userId: 'u2', reqId: 'f1' }), { type: 'error', code: 'forbidden', reqId: 'f1' }, 'echoed on forbidden')
    t.match(await frames.ask({ type: 'subscribe', userId: 'u1', reqId: 's1' }), { type: 'subscribed', reqId: 's1' }, 'echoed on subscribed')
  })

  t.test(`[${store.name}] ping answers pong with the server time`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    const before = Date.now()
    const pong = await frames.ask({ type: 'ping' })
    const after = Date.now()
    t.same(Object.keys(pong).sort(), ['ts', 'type'])
    t.equal(pong.type, 'pong')
    t.ok(Number.isInteger(pong.ts) && pong.ts >= before && pong.ts <= after, `ts ${pong.ts} within [${before}, ${after}]`)
  })

  t.test(`[${store.name}] another user's id is forbidden in both protocols`, async (t) => {
    const app = await store.build(t)
    await app.heartStore.append('u2', [{ bpm: 90, ts: Date.now() }])
    const frames = await open(t, app)
    t.match(JSON.parse(await askText(frames, 'u2')), { type: 'error', code: 'forbidden', message: String }, 'legacy text frame')
    t.match(await frames.ask({ type: 'get', userId: 'u2' }), { type: 'error', code: 'forbidden', message: String }, 'get')
    t.match(await frames.ask({ type: 'subscribe', userId: 'u2' }), { type: 'error', code: 'forbidden', message: String }, 'subscribe')
    t.equal(await askText(frames, 'u1'), '0', 'the own id still answers')
  })

  t.test(`[${store.name}] each bad frame gets bad_request and the same socket keeps answering`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    for (const [what, frame] of BAD_FRAMES) {
      frames.ws.send(frame)
      const reply = await frames.json()
      t.match(reply, { type: 'error', code: 'bad_request', message: String }, what)
      t.notOk('reqId' in reply, `${what}: no reqId to echo`)
      await assertStillAnswers(t, frames, what)
    }
    t.equal(frames.closeCode, null, 'never closed')
  })

  t.test(`[${store.name}] a frame of MAX_PAYLOAD_BYTES is answered and a larger one closes the socket with 1009`, async (t) => {
    const app = await store.build(t, { MAX_PAYLOAD_BYTES: '256' })
    const frames = await open(t, app)
    const atLimit = '{"type":"ping"}'.padEnd(256, ' ')
    t.equal(Buffer.byteLength(atLimit), 256)
    t.match(await frames.ask(atLimit), { type: 'pong' }, 'a frame of exactly the limit')
    frames.ws.send(`{"type":"ping","pad":"${'x'.repeat(256)}"}`)
    t.equal(await closedWithin(frames, 3000), 1009)
  })

  t.test(`[${store.name}] subscribe to the own id answers subscribed with current null when there is no reading`, async (t) => {
    const app = await store.build(t)
    const frames = await open(t, app)
    t.same(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed', userId: 'u1', current: null, lastId: null, state: 'offline', lastTs: null, alerts: [] })
  })
}

/**
 * Clients made by injectWS do not answer pings at all (ws only auto-pongs in clients it connects
 * itself), so the heartbeat is tested with real clients over TCP, as mini programs and browsers connect.
 */
async function connect (t: Test, app: FastifyInstance, options: { autoPong?: boolean } = {}): Promise<Frames> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  const ws = new WebSocket(`ws://127.0.0.1:${port}${PATH}`, { headers: bearer('u1'), ...options })
  t.teardown(() => ws.terminate())
  const frames = new Frames(ws)
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return frames
}

t.test('the server pings every PING_INTERVAL_MS and a client that answers stays open', async (t) => {
  const app = await build(t, { PING_INTERVAL_MS: '100' })
  const frames = await connect(t, app)
  let pings = 0
  frames.ws.on('ping', () => pings++)
  await sleep(500)
  t.equal(frames.closeCode, null, 'still open after 500 ms')
  t.ok(pings >= 3, `pinged ${pings} times`)
  await assertStillAnswers(t, frames, 'five ping intervals')
})

t.test('the server terminates a client that does not answer its pings', async (t) => {
  const app = await build(t, { PING_INTERVAL_MS: '100' })
  const frames = await connect(t, app, { autoPong: false })
  let pings = 0
  frames.ws.on('ping', () => pings++)
  const started = Date.now()
  t.equal(await closedWithin(frames, 2000), 1006, 'cut without a close frame')
  t.ok(pings >= 1, `pinged ${pings} times before`)
  t.ok(Date.now() - started < 1000, 'within a few intervals')
  t.ok(await eventually(() => app.websocketServer.clients.size === 0, 2000), 'gone from the server')
})

t.test('with Redis down get and legacy frames answer unavailable, the socket stays open, and answers again once Redis is back', async (t) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const app = await build(t, { REDIS_URL: redis.url })
  await app.heartStore.append('u1', [{ bpm: 72, ts: Date.now() }])
  const frames = await open(t, app)
  t.match(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', bpm: 72 })

  await redis.stop()
  t.same(await frames.ask({ type: 'get', userId: 'u1', reqId: 'r1' }, 5000),
    { type: 'error', code: 'unavailable', message: 'heart-rate store is unavailable, try again shortly', reqId: 'r1' })
  t.match(JSON.parse(await askText(frames, 'u1', 5000)), { type: 'error', code: 'unavailable' }, 'the legacy protocol too')
  t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }, 5000), { type: 'error', code: 'unavailable' }, 'and subscribe')
  await assertStillAnswers(t, frames, 'unavailable answers')

  await redis.start()
  let reply: any = null
  const back = await eventually(async () => {
    reply = await frames.ask({ type: 'get', userId: 'u1' }, 5000)
    return reply.type === 'current'
  }, 15000, 100)
  t.ok(back, 'answers current once Redis is back')
  t.same(reply, { type: 'current', userId: 'u1', bpm: null, ts: null }, 'the restarted Redis kept nothing')
  t.equal(frames.closeCode, null, 'never closed')
})

t.test('original layout: with HEART_KEY_PREFIX="" a value another writer SETs at <userId> is served', async (t) => {
  const userId = uniquePrefix().slice(0, -1)
  const app = await buildWithRedis(t, { HEART_KEY_PREFIX: '' })
  const client = (await sharedRedis()).client()
  t.teardown(() => client.disconnect())
  await client.set(userId, '72')
  const frames = await open(t, app, userId)
  t.equal(await askText(frames, userId), '72', 'legacy text frame')
  t.same(await frames.ask({ type: 'get', userId }), { type: 'current', userId, bpm: 72, ts: null }, 'get, with no known time')
  const ts = Date.now()
  await app.heartStore.append(userId, [{ bpm: 80, ts }])
  t.equal(await client.get(userId), '80', 'readings the service takes are SET at <userId> for the original readers')
  t.same(await frames.ask({ type: 'get', userId }), { type: 'current', userId, bpm: 80, ts })
  await client.set(userId, '66')
  t.same(await frames.ask({ type: 'get', userId }), { type: 'current', userId, bpm: 66, ts: null }, 'a later SET by another writer wins, time unknown')
})

t.test('connection open and close are logged at info with userId, close code and reqId, never the token', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  const tok = token('u1')
  const ws = new WebSocket(`ws://127.0.0.1:${port}${PATH}`, { headers: { authorization: `Bearer ${tok}` } })
  t.teardown(() => ws.terminate())
  const frames = new Frames(ws)
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  await assertStillAnswers(t, frames, 'opening')
  ws.close(1000)
  t.equal(await closedWithin(frames, 3000), 1000)
  t.ok(await eventually(() => logs.some((l) => l.includes('socket closed')), 3000), 'the close is logged')
  const lines = logs.map((l) => JSON.parse(l))
  const opened = lines.find((l) => l.msg === 'socket open')
  const closed = lines.find((l) => l.msg === 'socket closed')
  t.match(opened, { level: 30, userId: 'u1', reqId: String })
  t.match(closed, { level: 30, userId: 'u1', code: 1000, reqId: opened?.reqId })
  t.notOk(logs.some((l) => l.includes(tok)), 'no log line holds the token')
})

t.test('a socket cut by the client is logged closed with 1006', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const frames = await open(t, app)
  await assertStillAnswers(t, frames, 'opening')
  frames.ws.terminate()
  t.ok(await eventually(() => logs.some((l) => l.includes('socket closed')), 3000), 'the close is logged')
  t.match(logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'socket closed'), { level: 30, userId: 'u1', code: 1006, reqId: String })
})
