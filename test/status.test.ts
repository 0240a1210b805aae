/**
 * Online / offline (OFFLINE_AFTER_MS): `subscribed` carries `state` and `lastTs`, and subscribers
 * get `status` frames when the user goes offline and just before the reading that brings them back,
 * on both stores, on every instance at the same moment, and at once after a restart.
 */
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Access } from '../src/heart/access.js'
import { Hub, Subscription } from '../src/heart/hub.js'
import { MemoryStore } from '../src/heart/memory-store.js'
import {
  build, buildWithRedis, eventually, openWebSocket, openSocket, recorder, sharedRedis, startServer, token, uniquePrefix,
  type Frames, type ServerProcess
} from './helper.js'

const KEY = 'status-key'

type Builder = (t: Test) => Promise<FastifyInstance>
const stores: Array<[string, Builder]> = [
  ['embedded', (t) => build(t, { INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '1000' })],
  ['redis', (t) => buildWithRedis(t, { INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '1000' })]
]

async function ingest (app: FastifyInstance, userId: string, body: object): Promise<void> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: body })
  if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
}

/** The next frame, with the local time it was taken from the socket. */
async function timed (frames: Frames, ms?: number): Promise<{ frame: any, at: number }> {
  const frame = await frames.json(ms)
  return { frame, at: Date.now() }
}

for (const [name, make] of stores) {
  t.test(`${name}: offline until a reading, online just before it, offline OFFLINE_AFTER_MS after the newest one`, async (t) => {
    const app = await make(t)
    const frames = await openSocket(app, 'u1', { withStatus: true })
    t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed', state: 'offline', lastTs: null }, 'never had a reading')

    await ingest(app, 'u1', { bpm: 72 })
    const online = await frames.json()
    const first = await frames.json()
    t.match(online, { type: 'status', userId: 'u1', state: 'online' })
    t.match(first, { type: 'reading', bpm: 72 })
    t.equal(online.lastTs, first.ts, 'online carries the reading that brought the user back')
    t.same(Object.keys(online).sort(), ['lastTs', 'state', 'type', 'userId'])

    await ingest(app, 'u1', { bpm: 73 })
    const second = await frames.json()
    t.match(second, { type: 'reading', bpm: 73 }, 'no status while the user stays online')

    const offline = await timed(frames, 3000)
    t.match(offline.frame, { type: 'status', userId: 'u1', state: 'offline', lastTs: second.ts })
    t.ok(offline.at - second.ts >= 1000, `offline once the newest reading is OFFLINE_AFTER_MS old (after ${offline.at - second.ts} ms)`)

    // An upload of old readings is history, not presence: the reading comes, no status before it.
    await ingest(app, 'u1', { bpm: 60, ts: Date.now() - 5000 })
    await ingest(app, 'u1', { bpm: 74 })
    t.match(await frames.json(), { type: 'reading', bpm: 60 })
    t.match(await frames.json(), { type: 'status', state: 'online' })
    const third = await frames.json()
    t.match(third, { type: 'reading', bpm: 74 })

    const late = await openSocket(app, 'u1', { withStatus: true })
    t.match(await late.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed', state: 'online', lastTs: third.ts }, 'a later subscriber is told the state at once')
    t.match(await late.ask({ type: 'subscribe', userId: 'u1', reqId: 'again' }), { type: 'subscribed', state: 'online', lastTs: third.ts, reqId: 'again' }, 'and again on a repeated subscribe')
    frames.ws.terminate()
    late.ws.terminate()
  })
}

t.test('sockets that do not ask for status frames (the other tests) never see them', async (t) => {
  const app = await stores[0][1](t)
  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  await ingest(app, 'u1', { bpm: 72 })
  t.match(await frames.json(), { type: 'reading', bpm: 72 })
  frames.ws.terminate()
})

t.test('a slow socket: status is never conflated away, and comes after the newest reading still held back', async (t) => {
  const app = await build(t, { INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '1000', MAX_BUFFERED_BYTES: '65536' })
  const frames = await openSocket(app, 'u1', { withStatus: true })
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  const stream = (frames.ws as any)._socket
  stream.pause()
  const base = Date.now() - 2000
  for (let i = 0; i < 4; i++) await ingest(app, 'u1', { readings: Array.from({ length: 500 }, (_, j) => ({ bpm: 60 + (j % 100), ts: base + i * 500 + j })) })
  const statusSent = async (): Promise<boolean> => /heart_frames_out_total\{type="status"\} 2/.test((await app.inject('/metrics')).body)
  t.ok(await eventually(statusSent, 5000), 'online and offline were written while the socket did not read')
  stream.resume()
  const got: any[] = []
  for (;;) {
    const f = await frames.json(1000).catch(() => null)
    if (f === null) break
    got.push(f)
  }
  const statuses = got.filter((f) => f.type === 'status').map((f) => f.state)
  t.same(statuses, ['online', 'offline'], 'both changes arrive')
  t.ok(got.filter((f) => f.type === 'reading').length < 2000, 'readings were conflated')
  t.match(got.at(-1), { type: 'status', state: 'offline', lastTs: base + 1999 }, 'offline comes last')
  t.match(got.at(-2), { type: 'reading', ts: base + 1999 }, 'just after the newest reading, which was held back when offline came')
  frames.ws.terminate()
})

function kinds (frames: string[]): string[] {
  return frames.map((f) => {
    const frame = JSON.parse(f)
    return `${frame.type as string}:${String(frame.type === 'reading' ? frame.bpm : frame.state)}`
  })
}

/** Makes the next `history` read of the store wait until `release` is called; `entered` resolves once it waits. */
function holdHistory (store: MemoryStore): { entered: Promise<void>, release: () => void } {
  const history = store.history.bind(store)
  let release: () => void = () => {}
  let enter: () => void = () => {}
  const entered = new Promise<void>((resolve) => { enter = resolve })
  const held = new Promise<void>((resolve) => { release = resolve })
  store.history = async (userId, query) => {
    store.history = history
    enter()
    await held
    return await history(userId, query)
  }
  return { entered, release: () => release() }
}

t.test('during a replay status frames are held with the readings; one that subscribed already reported is not sent', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, new Access(store), { warn () {} }, { offlineAfterMs: 60_000 })
  t.teardown(() => hub.close())
  const [since] = (await store.append('u1', [{ bpm: 60, ts: Date.now() - 120_000 }])).ids
  const watcher = recorder('u1')
  const hold = holdHistory(store)
  const subscribing = hub.subscribe(new Subscription(watcher, 'u1'), since, (r) => watcher.frames.push(JSON.stringify({ type: 'subscribed', state: r.state })))
  await hold.entered
  // Arrives while the replay waits: the topic goes online; the status and the reading are held.
  await store.append('u1', [{ bpm: 70, ts: Date.now() }])
  await new Promise((resolve) => setImmediate(resolve)) // the embedded feed delivers in a microtask
  hold.release()
  await subscribing
  t.same(kinds(watcher.frames), ['subscribed:online', 'reading:70'], 'subscribed says online already; the reading comes once, from the replay')
})

t.test('changes while the replay runs are already in subscribed: none is sent again after it', async (t) => {
  const store = new MemoryStore(100)
  const hub = new Hub(store, new Access(store), { warn () {} }, { offlineAfterMs: 500 })
  t.teardown(() => hub.close())
  const other = recorder('u1')
  await hub.subscribe(new Subscription(other, 'u1'), undefined, () => {})
  await store.append('u1', [{ bpm: 60, ts: Date.now() }])
  const watcher = recorder('u1')
  const hold = holdHistory(store)
  const subscribing = hub.subscribe(new Subscription(watcher, 'u1'), '0-0', (r) => watcher.frames.push(JSON.stringify({ type: 'subscribed', state: r.state })))
  await hold.entered
  t.ok(await eventually(() => kinds(other.frames).includes('status:offline'), 3000), 'the offline timer fired while the replay waited')
  hold.release()
  await subscribing
  t.same(kinds(other.frames), ['status:online', 'reading:60', 'status:offline'], 'a live subscriber hears each change')
  t.same(kinds(watcher.frames), ['subscribed:offline', 'reading:60'], 'the replay, and no stale online or repeated offline')
})

/** Opens a socket on a server process, subscribes to `userId`, and returns it with the `subscribed` answer. */
async function watch (tt: Test, server: ServerProcess, viewer: string, userId: string): Promise<{ frames: Frames, subscribed: any }> {
  const frames = await openWebSocket(tt, `ws://127.0.0.1:${server.port}/heart/current`, { headers: { authorization: `Bearer ${token(viewer)}` }, withStatus: true })
  const subscribed = await frames.ask({ type: 'subscribe', userId })
  return { frames, subscribed }
}

async function post (server: ServerProcess, userId: string, body: object): Promise<void> {
  const res = await fetch(`${server.url}/heart/${userId}/readings`, {
    method: 'POST',
    headers: { 'x-api-key': KEY, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  if (res.status !== 202) throw new Error(`ingest answered ${res.status}: ${await res.text()}`)
}

t.test('two instances: viewers on both see online and offline, also where the readings did not arrive, within 1 s of each other', async (t) => {
  const redis = await sharedRedis()
  const env = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '2000' }
  // One after the other: on a loaded machine two at once may miss startServer's deadline.
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  const onA = await watch(t, a, 'u1', 'u1')
  const onB = await watch(t, b, 'u1', 'u1')
  t.match(onA.subscribed, { state: 'offline', lastTs: null })
  t.match(onB.subscribed, { state: 'offline', lastTs: null })

  await post(a, 'u1', { bpm: 80 })
  for (const side of [onA, onB]) {
    t.match(await side.frames.json(), { type: 'status', state: 'online' })
    t.match(await side.frames.json(), { type: 'reading', bpm: 80 })
  }
  const [offA, offB] = await Promise.all([timed(onA.frames, 5000), timed(onB.frames, 5000)])
  t.match(offA.frame, { type: 'status', state: 'offline' })
  t.same(offB.frame, offA.frame, 'the same frame on both instances')
  t.ok(Math.abs(offA.at - offB.at) < 1000, `offline on both within 1 s (${Math.abs(offA.at - offB.at)} ms apart)`)
  t.ok(offB.at - offB.frame.lastTs >= 2000, 'not before the reading is OFFLINE_AFTER_MS old')
})

t.test('a restarted instance knows the state at once from Redis and goes offline when the reading ages, not a fresh timer later', async (t) => {
  const redis = await sharedRedis()
  // Longer than startServer's own deadline: the restart cannot outlast the reading's freshness.
  const offlineAfterMs = 20_000
  const env = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: String(offlineAfterMs) }
  const a = await startServer(t, env)
  let b = await startServer(t, env)
  await b.stop()
  // Measured 2 s ago: offline is due 18 s from now; a timer started at subscribing would fire over 2 s later than that.
  const ts = Date.now() - 2000
  await post(a, 'u1', { bpm: 90, ts })
  b = await startServer(t, { ...env, PORT: String(b.port) })
  const { frames, subscribed } = await watch(t, b, 'u1', 'u1')
  const subscribedAt = Date.now()
  t.match(subscribed, { state: 'online', lastTs: ts, current: { bpm: 90, ts } })
  const offline = await timed(frames, offlineAfterMs + 2000)
  t.match(offline.frame, { type: 'status', state: 'offline', lastTs: ts })
  const late = offline.at - (ts + offlineAfterMs)
  t.ok(late >= 0 && late < 1000, `offline ${late} ms after the reading was OFFLINE_AFTER_MS old`)
  t.ok(offline.at < subscribedAt + offlineAfterMs - 1000, 'earlier than a timer started at subscribing would fire')
})
