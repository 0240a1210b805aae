import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { build, buildWithRedis, eventually, openSocket, sharedRedis, sleep, token, uniquePrefix, type Frames } from './helper.js'

const KEY = 'push-key'

type Builder = (t: Test, env?: Record<string, string>) => Promise<FastifyInstance>
const stores: Array<[string, Builder]> = [
  ['embedded', (t, env = {}) => build(t, { INGEST_API_KEYS: KEY, ...env })],
  ['redis', (t, env = {}) => buildWithRedis(t, { INGEST_API_KEYS: KEY, ...env })]
]

async function ingest (app: FastifyInstance, userId: string, body: unknown): Promise<string[]> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: body as object })
  if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
  return res.json().ids
}

/** Collects reading frames for a user until `count` arrived. */
async function readings (frames: Frames, count: number, ms = 5000): Promise<any[]> {
  const got: any[] = []
  while (got.length < count) got.push(await frames.until((f) => f.type === 'reading', ms))
  return got
}

for (const [name, make] of stores) {
  t.test(`${name}: subscribe answers subscribed with the current value, then pushes each new reading`, async (t) => {
    const app = await make(t)
    await ingest(app, 'u1', { bpm: 70, ts: Date.now() - 1000 })
    const frames = await openSocket(app, 'u1')
    const sub = await frames.ask({ type: 'subscribe', userId: 'u1', reqId: 's1' })
    t.match(sub, { type: 'subscribed', userId: 'u1', current: { bpm: 70 }, reqId: 's1' })
    t.notOk('truncated' in sub)
    const [id] = await ingest(app, 'u1', { bpm: 81 })
    const r = await frames.json()
    t.same({ ...r, ts: 0 }, { type: 'reading', userId: 'u1', id, bpm: 81, ts: 0 })
    frames.ws.terminate()
  })

  t.test(`${name}: subscribe with since replays what was missed, then goes live without gap or duplicate`, async (t) => {
    const app = await make(t)
    const first = await ingest(app, 'u1', { readings: [{ bpm: 60 }, { bpm: 61 }, { bpm: 62 }] })
    const frames = await openSocket(app, 'u1')
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'u1', since: first[0] }))
    // Readings keep arriving while the replay runs.
    const posting = (async () => {
      const ids: string[] = []
      for (let i = 0; i < 20; i++) ids.push(...await ingest(app, 'u1', { bpm: 100 + i }))
      return ids
    })()
    t.match(await frames.json(), { type: 'subscribed', userId: 'u1' })
    const posted = await posting
    const expected = [first[1], first[2], ...posted]
    const got = await readings(frames, expected.length)
    t.same(got.map((r) => r.id), expected, 'every reading after since, once, in order')
    await frames.quiet(100, 'nothing more')
    frames.ws.terminate()
  })

  t.test(`${name}: since older than the retained history replays what is kept and says truncated`, async (t) => {
    const app = await make(t, { HISTORY_MAX: '5' })
    const ids: string[] = []
    for (let i = 0; i < 4; i++) ids.push(...await ingest(app, 'u1', { readings: Array.from({ length: 250 }, (_, j) => ({ bpm: 60 + (j % 50) })) }))
    const frames = await openSocket(app, 'u1')
    const sub = await frames.ask({ type: 'subscribe', userId: 'u1', since: ids[0] })
    t.equal(sub.truncated, true)
    const page = await app.inject({ url: '/heart/u1/readings?limit=1000', headers: { authorization: `Bearer ${token('u1')}` } })
    const kept = page.json().readings.map((r: any) => r.id)
    const got = await readings(frames, kept.length)
    t.same(got.map((r) => r.id), kept)
    frames.ws.terminate()
  })

  t.test(`${name}: unsubscribe answers unsubscribed and stops the pushes; closing drops every subscription`, async (t) => {
    const app = await make(t)
    const frames = await openSocket(app, 'u1')
    await frames.ask({ type: 'subscribe', userId: 'u1' })
    t.same(await frames.ask({ type: 'unsubscribe', userId: 'u1', reqId: 7 }), { type: 'unsubscribed', userId: 'u1', reqId: 7 })
    await ingest(app, 'u1', { bpm: 90 })
    await frames.quiet(150, 'nothing after unsubscribe')
    t.same(await frames.ask({ type: 'unsubscribe', userId: 'u1' }), { type: 'unsubscribed', userId: 'u1' }, 'unsubscribing again is harmless')
    await frames.ask({ type: 'subscribe', userId: 'u1' })
    t.equal(app.hub.subscriptionCount, 1)
    frames.ws.terminate()
    t.ok(await eventually(() => app.hub.topicCount === 0), 'the hub forgets the closed socket')
  })

  t.test(`${name}: subscribing twice is idempotent, and subscriptions per socket are limited`, async (t) => {
    const app = await make(t, { MAX_SUBSCRIPTIONS_PER_CONNECTION: '1' })
    const frames = await openSocket(app, 'u1')
    t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed' })
    t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed' })
    await ingest(app, 'u1', { bpm: 90 })
    t.match(await frames.json(), { type: 'reading', bpm: 90 })
    await frames.quiet(100, 'one push, not two')
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'u1', reqId: 'x' }))
    await frames.json()
    t.equal(app.hub.subscriptionCount, 1)
    frames.ws.terminate()
  })

  t.test(`${name}: an unsubscribe sent right after subscribe cancels it, even while it is being authorized`, async (t) => {
    const app = await make(t)
    await app.heartStore.grant('owner', 'u1', 10)
    const frames = await openSocket(app, 'u1')
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'owner', reqId: 's' }))
    frames.ws.send(JSON.stringify({ type: 'unsubscribe', userId: 'owner', reqId: 'u' }))
    t.same(await frames.json(), { type: 'unsubscribed', userId: 'owner', reqId: 'u' })
    await ingest(app, 'owner', { bpm: 80 })
    await frames.quiet(200, 'no subscribed, no readings')
    t.equal(app.hub.subscriptionCount, 0)
    frames.ws.terminate()
  })

  t.test(`${name}: subscribed carries lastId, and only readings after it follow; resuming from it misses nothing`, async (t) => {
    const app = await make(t)
    const [first] = await ingest(app, 'u1', { bpm: 70 })
    const frames = await openSocket(app, 'u1')
    const sub = await frames.ask({ type: 'subscribe', userId: 'u1' })
    t.equal(sub.lastId, first)
    frames.ws.terminate()
    const missed = await ingest(app, 'u1', { readings: [{ bpm: 71 }, { bpm: 72 }] })
    const again = await openSocket(app, 'u1')
    again.ws.send(JSON.stringify({ type: 'subscribe', userId: 'u1', since: sub.lastId }))
    t.match(await again.json(), { type: 'subscribed', lastId: missed[1] })
    t.same((await readings(again, 2)).map((r) => r.id), missed)
    again.ws.terminate()
  })

  t.test(`${name}: subscribing to another user is forbidden`, async (t) => {
    const app = await make(t)
    const frames = await openSocket(app, 'u1')
    t.match(await frames.ask({ type: 'subscribe', userId: 'u2', reqId: 'r' }), { type: 'error', code: 'forbidden', reqId: 'r' })
    t.equal(app.hub.topicCount, 0)
    frames.ws.terminate()
  })

  t.test(`${name}: a socket that stops reading gets conflated readings, newest last`, async (t) => {
    const app = await make(t, { MAX_BUFFERED_BYTES: '65536' })
    const frames = await openSocket(app, 'u1')
    await frames.ask({ type: 'subscribe', userId: 'u1' })
    const stream = (frames.ws as any)._socket
    stream.pause()
    const ids: string[] = []
    for (let i = 0; i < 4; i++) ids.push(...await ingest(app, 'u1', { readings: Array.from({ length: 500 }, (_, j) => ({ bpm: 60 + (j % 100), ts: Date.now() - 10000 + i * 500 + j })) }))
    await sleep(100)
    stream.resume()
    const got: string[] = []
    for (;;) {
      const f = await frames.json(1000).catch(() => null)
      if (f === null) break
      got.push(f.id)
    }
    t.ok(got.length < ids.length, `conflated: ${got.length} of ${ids.length} frames sent`)
    t.equal(got.at(-1), ids.at(-1), 'the newest reading is delivered')
    t.same(got, [...got].sort((a, b) => ids.indexOf(a) - ids.indexOf(b)), 'in order')
    t.equal(frames.closeCode, null, 'still open')
    frames.ws.terminate()
  })

  t.test(`${name}: a socket past MAX_BUFFERED_BYTES is closed with 1013`, async (t) => {
    const app = await make(t, { MAX_BUFFERED_BYTES: '16384' })
    const first = await ingest(app, 'u1', { bpm: 60 })
    for (let i = 0; i < 4; i++) await ingest(app, 'u1', { readings: Array.from({ length: 500 }, () => ({ bpm: 70 })) })
    const frames = await openSocket(app, 'u1')
    const stream = (frames.ws as any)._socket
    stream.pause()
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'u1', since: first[0] }))
    await sleep(200)
    stream.resume()
    t.equal(await frames.closed, 1013)
  })

  t.test(`${name}: one replay at a time per socket: subscribes with since are replayed one after the other, in the order sent`, async (t) => {
    const app = await make(t)
    const owners = ['ra', 'rb', 'rc']
    // Two history pages each: the replays would interleave at every await if they ran together.
    for (const owner of owners) {
      for (let i = 0; i < 3; i++) await ingest(app, owner, { readings: Array.from({ length: 500 }, (_, j) => ({ bpm: 60 + (j % 100) })) })
      const res = await app.inject({ method: 'PUT', url: '/shares/rv', headers: { authorization: `Bearer ${token(owner)}` } })
      if (res.statusCode !== 200) throw new Error(`grant answered ${res.statusCode}`)
    }
    const frames = await openSocket(app, 'rv')
    t.teardown(() => frames.ws.terminate())
    for (const owner of owners) frames.ws.send(JSON.stringify({ type: 'subscribe', userId: owner, since: '0-0', reqId: owner }))
    const order: string[] = []
    while (order.length < owners.length * 1501) {
      const f = await frames.json()
      order.push(f.type === 'subscribed' ? `subscribed ${f.userId}` : f.userId)
    }
    const expected = owners.flatMap((owner) => [`subscribed ${owner}`, ...Array(1500).fill(owner)])
    const firstMismatch = order.findIndex((x, i) => x !== expected[i])
    t.equal(firstMismatch, -1, firstMismatch === -1 ? 'each replay whole before the next' : `frame ${firstMismatch} is ${order[firstMismatch]}, expected ${expected[firstMismatch]}`)
  })

  t.test(`${name}: a subscribe with since waiting for another replay is cancelled by unsubscribe`, async (t) => {
    const app = await make(t)
    for (const owner of ['ca', 'cb']) {
      await ingest(app, owner, { readings: Array.from({ length: 500 }, () => ({ bpm: 70 })) })
      await app.inject({ method: 'PUT', url: '/shares/cv', headers: { authorization: `Bearer ${token(owner)}` } })
    }
    const frames = await openSocket(app, 'cv')
    t.teardown(() => frames.ws.terminate())
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'ca', since: '0-0' }))
    frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'cb', since: '0-0' }))
    frames.ws.send(JSON.stringify({ type: 'unsubscribe', userId: 'cb', reqId: 'u' }))
    t.match(await frames.until((f) => f.type === 'unsubscribed'), { userId: 'cb', reqId: 'u' })
    const got: any[] = []
    while (got.filter((f) => f.type === 'reading').length < 500) got.push(await frames.json())
    t.notOk(got.some((f) => f.userId === 'cb'), 'nothing of cb: its replay never started')
    t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'and nothing of it after the replay of ca either')
  })
}

t.test('redis: one Redis subscription per watched user per instance, released when the last watcher leaves', async (t) => {
  const redis = await sharedRedis()
  const raw = redis.client()
  t.teardown(() => raw.disconnect())
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  const channel = `{${prefix}u1}:live`
  const numsub = async (): Promise<number> => Number((await raw.pubsub('NUMSUB', channel) as [string, number])[1])
  const sockets = await Promise.all([1, 2, 3].map(() => openSocket(app, 'u1')))
  for (const s of sockets) await s.ask({ type: 'subscribe', userId: 'u1' })
  t.equal(await numsub(), 1)
  const [id] = await ingest(app, 'u1', { bpm: 77 })
  for (const s of sockets) t.match(await s.json(), { type: 'reading', id, bpm: 77 })
  sockets[0].ws.terminate()
  sockets[1].ws.terminate()
  t.ok(await eventually(() => app.hub.subscriptionCount === 1), 'the hub has processed both closes')
  t.equal(await numsub(), 1, 'still watched by one socket')
  const [next] = await ingest(app, 'u1', { bpm: 78 })
  t.match(await sockets[2].json(), { type: 'reading', id: next, bpm: 78 }, 'and it still receives')
  sockets[2].ws.terminate()
  t.ok(await eventually(async () => await numsub() === 0), 'released')
})

t.test('redis: a reading posted to instance A reaches a subscriber on instance B within a second', async (t) => {
  const prefix = uniquePrefix()
  const a = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  const b = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  const frames = await openSocket(b, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  const started = Date.now()
  const [id] = await ingest(a, 'u1', { bpm: 88 })
  t.match(await frames.json(1000), { type: 'reading', userId: 'u1', id, bpm: 88 })
  t.ok(Date.now() - started < 1000)
  frames.ws.terminate()
})

t.test('redis: readings published while the feed connection was away are filled from history, in order, once', async (t) => {
  const redis = await sharedRedis()
  const raw = redis.client()
  t.teardown(() => raw.disconnect())
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY })
  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  const before = await ingest(app, 'u1', { bpm: 70 })
  await frames.json()
  // Cut only the pub/sub connection: the command connection stays, so ingest keeps working.
  await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  const during: string[] = []
  for (let i = 0; i < 5; i++) during.push(...await ingest(app, 'u1', { bpm: 71 + i }))
  const got = await readings(frames, during.length)
  t.same(got.map((r) => r.id), during)
  const after = await ingest(app, 'u1', { bpm: 99 })
  t.match(await frames.json(), { type: 'reading', id: after[0] })
  await frames.quiet(100, 'nothing filled twice')
  t.notSame(before, after)
  frames.ws.terminate()
})

t.test('redis: with LEGACY_KEYSPACE_EVENTS, values that writers only SET are pushed, and ingest is not pushed twice', async (t) => {
  const redis = await sharedRedis()
  const raw = redis.client()
  t.teardown(() => raw.disconnect())
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix, LEGACY_KEYSPACE_EVENTS: 'true' })
  t.match(await raw.config('GET', 'notify-keyspace-events'), ['notify-keyspace-events', /K/])
  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  const before = Date.now()
  await raw.set(`${prefix}u1`, '66')
  const legacy = await frames.json()
  t.match(legacy, { type: 'reading', userId: 'u1', id: null, bpm: 66 })
  t.ok(legacy.ts >= before && legacy.ts <= Date.now(), 'ts is the time the value was seen')
  const [id] = await ingest(app, 'u1', { bpm: 90 })
  t.match(await frames.json(), { type: 'reading', id, bpm: 90 })
  await frames.quiet(150, 'the service\'s own SET is not pushed again')
  await raw.set(`${prefix}u2`, '50')
  await frames.quiet(100, 'users nobody here watches are not pushed')
  frames.ws.terminate()
})

t.test('redis: without LEGACY_KEYSPACE_EVENTS, a direct SET is readable but not pushed', async (t) => {
  const redis = await sharedRedis()
  const raw = redis.client()
  t.teardown(() => raw.disconnect())
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  await raw.set(`${prefix}u1`, '66')
  await frames.quiet(150, 'a direct SET is not pushed')
  t.match(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', bpm: 66, ts: null })
  frames.ws.terminate()
})
