/**
 * `publish` on /heart/current: the wearer's own socket writes its readings with the rules and the
 * atomic write of HTTP ingest, answered by `published`; everything else is an error frame and the
 * socket stays open.
 */
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Env } from '../plugins/config.js'
import { PublishLimiter } from '../src/heart/publish-limit.js'
import { bearer, builders, openSocket, openWebSocket, sharedRedis, startServer, uniquePrefix, type Frames } from './helper.js'

const ID = /^\d+-\d+$/
/** A fixed past time, so readings ordered by `ts` do not depend on the clock. */
const T0 = 1_764_115_200_000

async function history (app: FastifyInstance, userId: string): Promise<Array<{ id: string, bpm: number, ts: number }>> {
  return (await app.heartStore.history(userId, { limit: 1000 })).readings
}

function sample (text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? undefined : Number(line.slice(name.length + 1))
}

async function stillAnswers (t: Test, frames: Frames): Promise<void> {
  t.match(await frames.ask({ type: 'ping', reqId: 'alive' }), { type: 'pong', reqId: 'alive' }, 'the socket still answers a ping')
}

for (const { store, build: builder } of builders) {
  t.test(store, async (t) => {
    t.test('a batch is stored in order and answered with its ids; a subscriber on another socket gets each reading', async (t) => {
      const app = await builder(t)
      const viewer = await openSocket(app, 'ana')
      t.teardown(() => viewer.ws.terminate())
      t.match(await viewer.ask({ type: 'subscribe', userId: 'ana' }), { type: 'subscribed', userId: 'ana' })
      const phone = await openSocket(app, 'ana')
      t.teardown(() => phone.ws.terminate())
      const reply = await phone.ask({ type: 'publish', readings: [{ bpm: 72, ts: T0 }, { bpm: 75, ts: T0 + 1000 }], reqId: 'p1' })
      t.match(reply, { type: 'published', duplicates: 0, reqId: 'p1' })
      t.equal(reply.ids.length, 2)
      for (const id of reply.ids) t.match(id, ID)
      t.same(await history(app, 'ana'), [{ id: reply.ids[0], bpm: 72, ts: T0 }, { id: reply.ids[1], bpm: 75, ts: T0 + 1000 }])
      t.match(await viewer.json(), { type: 'reading', userId: 'ana', id: reply.ids[0], bpm: 72, ts: T0 })
      t.match(await viewer.json(), { type: 'reading', userId: 'ana', id: reply.ids[1], bpm: 75, ts: T0 + 1000 })
      t.match(await app.heartStore.current('ana'), { bpm: 75, ts: T0 + 1000 })
    })

    t.test('one reading without ts gets server time; with its own userId it is the same', async (t) => {
      const app = await builder(t)
      const phone = await openSocket(app, 'ben')
      t.teardown(() => phone.ws.terminate())
      const before = Date.now()
      const reply = await phone.ask({ type: 'publish', bpm: 64 })
      const after = Date.now()
      t.match(reply, { type: 'published', duplicates: 0 })
      t.notOk('reqId' in reply, 'no reqId when none was sent')
      t.equal(reply.ids.length, 1)
      const again = await phone.ask({ type: 'publish', userId: 'ben', bpm: 66, reqId: 7 })
      t.match(again, { type: 'published', duplicates: 0, reqId: 7 })
      const stored = await history(app, 'ben')
      t.equal(stored.length, 2, 'readings without ts are never duplicates of each other')
      t.equal(stored[0].id, reply.ids[0])
      t.ok(stored[0].ts >= before && stored[0].ts <= after, 'stamped with server time')
    })

    t.test('a resend of the same ts stores nothing new: duplicates 1, the same id; counted in the ingest metrics', async (t) => {
      const app = await builder(t)
      const phone = await openSocket(app, 'cai')
      t.teardown(() => phone.ws.terminate())
      const first = await phone.ask({ type: 'publish', bpm: 80, ts: T0, reqId: 'a' })
      t.match(first, { type: 'published', duplicates: 0 })
      const resent = await phone.ask({ type: 'publish', readings: [{ bpm: 80, ts: T0 }, { bpm: 81, ts: T0 + 500 }], reqId: 'b' })
      t.match(resent, { type: 'published', duplicates: 1, reqId: 'b' })
      t.equal(resent.ids[0], first.ids[0], 'the stored reading\'s id')
      t.not(resent.ids[1], first.ids[0])
      t.equal((await history(app, 'cai')).length, 2)
      const metrics = (await app.inject('/metrics')).body
      t.equal(sample(metrics, 'heart_ingest_accepted_total'), 2)
      t.equal(sample(metrics, 'heart_ingest_duplicates_total'), 1)
    })

    t.test('invalid readings answer bad_request naming the field, store nothing, and the socket stays open', async (t) => {
      // Frames big enough for a batch over BATCH_MAX (the default 4096 bytes hold about 130 readings with ts).
      const app = await builder(t, { MAX_PAYLOAD_BYTES: '65536' })
      const phone = await openSocket(app, 'dan')
      t.teardown(() => phone.ws.terminate())
      const future = Date.now() + 120_000
      const cases: Array<[unknown, RegExp]> = [
        [{ bpm: 19 }, /frame\/bpm must be >= 20/],
        [{ bpm: 251 }, /frame\/bpm must be <= 250/],
        [{ bpm: 72.5 }, /frame\/bpm must be integer/],
        [{ bpm: '72' }, /frame\/bpm must be integer/],
        [{ bpm: 72, ts: future }, /frame\/ts is more than 60 s in the future/],
        [{ readings: [{ bpm: 72, ts: T0 }, { bpm: 72, ts: future }] }, /frame\/readings\/1\/ts is more than 60 s in the future/],
        [{ bpm: 72, ts: 1_764_115_200 }, /frame\/ts must be >= 1000000000000/],
        [{ readings: [] }, /frame\/readings must NOT have fewer than 1 items/],
        [{ readings: Array.from({ length: 501 }, (_, i) => ({ bpm: 70, ts: T0 + i })) }, /frame\/readings must NOT have more than 500 items/],
        [{ readings: [{ bpm: 72, extra: 1 }] }, /frame\/readings\/0\/extra is not an accepted property/],
        [{}, /frame must have bpm \(one reading\) or readings \(a batch\)/],
        [{ bpm: 72, readings: [{ bpm: 72 }] }, /not both/],
        [{ ts: T0, readings: [{ bpm: 72 }] }, /frame\/ts belongs inside each reading of a batch/],
        [{ bpm: 72, userId: '../x' }, /userId must be 1-64 characters/]
      ]
      for (const [i, [fields, message]] of cases.entries()) {
        const reply = await phone.ask({ type: 'publish', ...(fields as object), reqId: `bad-${i}` })
        t.match(reply, { type: 'error', code: 'bad_request', message, reqId: `bad-${i}` }, JSON.stringify(fields).slice(0, 80))
      }
      await stillAnswers(t, phone)
      t.same(await history(app, 'dan'), [], 'nothing was stored')
    })

    t.test('a frame naming another userId is forbidden and writes nothing', async (t) => {
      const app = await builder(t)
      const phone = await openSocket(app, 'eve')
      t.teardown(() => phone.ws.terminate())
      t.match(await phone.ask({ type: 'publish', userId: 'fay', bpm: 90, ts: T0, reqId: 'x' }), { type: 'error', code: 'forbidden', reqId: 'x' })
      t.same(await history(app, 'fay'), [])
      t.same(await history(app, 'eve'), [])
      await stillAnswers(t, phone)
    })

    t.test('past PUBLISH_RATE_LIMIT\'s bucket (a minute of readings) the user gets rate_limited on every socket, and nothing of that frame is stored', async (t) => {
      const app = await builder(t, { PUBLISH_RATE_LIMIT: '1' })
      const phone = await openSocket(app, 'gus')
      t.teardown(() => phone.ws.terminate())
      const backlog = Array.from({ length: 60 }, (_, i) => ({ bpm: 70, ts: T0 + i * 1000 }))
      const flushed = await phone.ask({ type: 'publish', readings: backlog, reqId: 'flush' })
      t.match(flushed, { type: 'published', duplicates: 0, reqId: 'flush' }, 'a minute\'s backlog passes at once')
      t.equal(flushed.ids.length, 60)
      t.match(await phone.ask({ type: 'publish', readings: [{ bpm: 71, ts: T0 + 61_000 }, { bpm: 72, ts: T0 + 62_000 }], reqId: 'over' }),
        { type: 'error', code: 'rate_limited', message: /at most 1 readings per second per user/, reqId: 'over' })
      const second = await openSocket(app, 'gus')
      t.teardown(() => second.ws.terminate())
      t.match(await second.ask({ type: 'publish', readings: [{ bpm: 71, ts: T0 + 61_000 }, { bpm: 72, ts: T0 + 62_000 }] }), { type: 'error', code: 'rate_limited' },
        'the bucket is the user\'s, not the socket\'s')
      await stillAnswers(t, phone)
      t.equal((await history(app, 'gus')).length, 60)
    })
  })
}

t.test('two server processes on one Redis: a reading published on A reaches a subscriber on B', async (t) => {
  const redis = await sharedRedis()
  const env: Env = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix() }
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  const viewer = await openWebSocket(t, `ws://127.0.0.1:${b.port}/heart/current`, { headers: bearer('hal') })
  t.match(await viewer.ask({ type: 'subscribe', userId: 'hal' }), { type: 'subscribed', userId: 'hal' })
  const phone = await openWebSocket(t, `ws://127.0.0.1:${a.port}/heart/current`, { headers: bearer('hal') })
  const reply = await phone.ask({ type: 'publish', readings: [{ bpm: 77, ts: T0 }], reqId: 'p1' })
  t.match(reply, { type: 'published', duplicates: 0, reqId: 'p1' })
  t.match(await viewer.json(), { type: 'reading', userId: 'hal', id: reply.ids[0], bpm: 77, ts: T0 })
  t.match(await phone.ask({ type: 'publish', bpm: 77, ts: T0, reqId: 'p2' }), { type: 'published', ids: [reply.ids[0]], duplicates: 1 })
  await viewer.quiet(300, 'a resend is pushed to nobody')
})

t.test('the publish bucket refills at PUBLISH_RATE_LIMIT per second up to a minute\'s worth, per user, and takes a batch whole or not at all', async (t) => {
  const limit = new PublishLimiter(10)
  const t0 = Date.now()
  t.equal(limit.capacity, 600)
  t.ok(limit.take('u1', 600, t0), 'a full minute\'s backlog at once')
  t.notOk(limit.take('u1', 1, t0), 'then nothing')
  t.ok(limit.take('u2', 600, t0), 'another user has their own bucket')
  t.notOk(limit.take('u1', 11, t0 + 1000), 'one second refills 10, not 11')
  t.ok(limit.take('u1', 10, t0 + 1000), 'the refused batch took nothing')
  t.ok(limit.take('u1', 600, t0 + 3_600_000), 'refills up to the minute\'s worth')
  t.notOk(limit.take('u1', 1, t0 + 3_600_000), 'and no further')
})
