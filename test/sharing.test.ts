import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Env } from '../plugins/config.js'
import { bearer, build, buildWithRedis, eventually, openSocket, sharedRedis, uniquePrefix, type Frames } from './helper.js'

/*
 * Sharing (issue 4, item 3): an owner grants a viewer with PUT /shares/:viewerId; every read path
 * (get, subscribe, the legacy text frame, GET …/readings) then lets the viewer in; DELETE shuts
 * them again at the next request and ends the viewer's live subscriptions with a `revoked` frame,
 * on every instance.
 */

const KEY = 'sharing-key'

type Builder = (t: Test, env?: Env) => Promise<FastifyInstance>

/** Grants and their checks must behave the same on both stores. */
const STORES: Array<{ name: string, build: Builder }> = [
  { name: 'embedded', build: async (t, env = {}) => await build(t, { INGEST_API_KEYS: KEY, ...env }) },
  { name: 'redis', build: async (t, env = {}) => await buildWithRedis(t, { INGEST_API_KEYS: KEY, ...env }) }
]

async function put (app: FastifyInstance, ownerId: string, viewerId: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'PUT', url: `/shares/${viewerId}`, headers: bearer(ownerId) })
}

async function del (app: FastifyInstance, ownerId: string, viewerId: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'DELETE', url: `/shares/${viewerId}`, headers: bearer(ownerId) })
}

async function get (app: FastifyInstance, url: string, userId: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'GET', url, headers: bearer(userId) })
}

async function grant (app: FastifyInstance, ownerId: string, viewerId: string): Promise<void> {
  const res = await put(app, ownerId, viewerId)
  if (res.statusCode !== 200) throw new Error(`PUT /shares/${viewerId} answered ${res.statusCode}: ${res.body}`)
}

async function ingest (app: FastifyInstance, userId: string, bpm: number): Promise<string> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: { bpm } })
  if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
  return res.json().ids[0]
}

/** Opens a socket that is terminated when the test ends. */
async function open (t: Test, app: FastifyInstance, userId: string): Promise<Frames> {
  const frames = await openSocket(app, userId)
  t.teardown(() => frames.ws.terminate())
  return frames
}

/** Subscribes and waits for the answer. */
async function subscribe (frames: Frames, userId: string): Promise<void> {
  const answer = await frames.ask({ type: 'subscribe', userId })
  if (answer.type !== 'subscribed') throw new Error(`subscribe ${userId} answered ${JSON.stringify(answer)}`)
}

/**
 * Asserts what `viewer` may do with `owner`'s heart rate through all four read paths. The socket
 * must have no subscription to the owner and nothing waiting to be read.
 */
async function assertAccess (t: Test, app: FastifyInstance, frames: Frames, viewer: string, owner: string, allowed: boolean, bpm: number): Promise<void> {
  const when = allowed ? 'allowed' : 'forbidden'
  const forbidden = { type: 'error', code: 'forbidden', reqId: String, message: String }
  const got = await frames.ask({ type: 'get', userId: owner, reqId: 'g' })
  t.match(got, allowed ? { type: 'current', userId: owner, bpm, reqId: 'g' } : forbidden, `get is ${when}`)
  frames.ws.send(owner)
  const legacy = await frames.next()
  if (allowed) t.equal(legacy, String(bpm), 'the legacy text frame answers the bpm')
  else t.match(JSON.parse(legacy), { type: 'error', code: 'forbidden' }, 'the legacy text frame is forbidden')
  const sub = await frames.ask({ type: 'subscribe', userId: owner, reqId: 's' })
  t.match(sub, allowed ? { type: 'subscribed', userId: owner, current: { bpm }, reqId: 's' } : forbidden, `subscribe is ${when}`)
  const history = await get(app, `/heart/${owner}/readings`, viewer)
  t.equal(history.statusCode, allowed ? 200 : 403, `GET /heart/${owner}/readings is ${when}`)
  if (allowed) t.match(history.json(), { userId: owner, readings: [{ bpm }] })
  else t.match(history.json(), { statusCode: 403, error: 'Forbidden', message: String })
}

for (const store of STORES) {
  t.test(`[${store.name}] sharing over HTTP`, async (t) => {
    t.test('PUT /shares/:viewerId grants the token\'s user\'s heart rate to the viewer and answers {ownerId, viewerId}; repeating it changes nothing', async (t) => {
      const app = await store.build(t)
      const first = await put(app, 'alice', 'bob')
      t.equal(first.statusCode, 200)
      t.same(first.json(), { ownerId: 'alice', viewerId: 'bob' })
      const again = await put(app, 'alice', 'bob')
      t.equal(again.statusCode, 200)
      t.same(again.json(), { ownerId: 'alice', viewerId: 'bob' })
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: ['bob'] }, 'bob is listed once')
      t.same((await get(app, '/shares/watching', 'bob')).json(), { viewerId: 'bob', owners: ['alice'] })
      t.same((await get(app, '/shares', 'bob')).json(), { ownerId: 'bob', viewers: [] }, 'the grant goes one way only')
    })

    t.test('PUT /shares/<yourself> answers 400: your own heart rate needs no grant', async (t) => {
      const app = await store.build(t)
      const res = await put(app, 'alice', 'alice')
      t.equal(res.statusCode, 400)
      t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /viewerId/ })
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: [] })
    })

    t.test('DELETE /shares/<yourself> answers 400 and leaves your own subscription alone', async (t) => {
      const app = await store.build(t)
      const frames = await open(t, app, 'alice')
      await subscribe(frames, 'alice')
      const res = await del(app, 'alice', 'alice')
      t.equal(res.statusCode, 400)
      t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /viewerId/ })
      await ingest(app, 'alice', 70)
      t.match(await frames.json(2000), { type: 'reading', userId: 'alice', bpm: 70 }, 'no revoked frame: the reading arrives')
    })

    t.test('a viewerId that is not a user id (a:b) answers 400 naming viewerId', async (t) => {
      const app = await store.build(t)
      for (const method of ['PUT', 'DELETE'] as const) {
        const res = await app.inject({ method, url: '/shares/a:b', headers: bearer('alice') })
        t.equal(res.statusCode, 400, method)
        t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /viewerId/ }, method)
      }
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: [] }, 'nothing was stored')
    })

    t.test('every /shares route answers 401 without a token', async (t) => {
      const app = await store.build(t)
      const routes = [['PUT', '/shares/bob'], ['DELETE', '/shares/bob'], ['GET', '/shares'], ['GET', '/shares/watching']] as const
      for (const [method, url] of routes) {
        const res = await app.inject({ method, url })
        t.equal(res.statusCode, 401, `${method} ${url}`)
        t.match(res.json(), { statusCode: 401, error: 'Unauthorized', message: /token/ }, `${method} ${url}`)
      }
      const forged = await app.inject({ method: 'PUT', url: '/shares/bob', headers: { authorization: 'Bearer not.a.jwt' } })
      t.equal(forged.statusCode, 401, 'an invalid token is no better')
    })

    t.test('GET /shares lists my viewers sorted; GET /shares/watching lists whose heart rate I may read, sorted', async (t) => {
      const app = await store.build(t)
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: [] }, 'empty at first')
      t.same((await get(app, '/shares/watching', 'bob')).json(), { viewerId: 'bob', owners: [] }, 'empty at first')
      for (const viewer of ['dave', 'bob', 'carol']) await grant(app, 'alice', viewer)
      for (const owner of ['zoe', 'erin']) await grant(app, owner, 'bob')
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: ['bob', 'carol', 'dave'] })
      t.same((await get(app, '/shares/watching', 'bob')).json(), { viewerId: 'bob', owners: ['alice', 'erin', 'zoe'] })
      t.same((await get(app, '/shares/watching', 'carol')).json(), { viewerId: 'carol', owners: ['alice'] })
    })

    t.test('DELETE /shares/:viewerId answers 204 and removes the grant from both lists; again it answers 404', async (t) => {
      const app = await store.build(t)
      await grant(app, 'alice', 'bob')
      await grant(app, 'alice', 'carol')
      const res = await del(app, 'alice', 'bob')
      t.equal(res.statusCode, 204)
      t.equal(res.body, '')
      t.same((await get(app, '/shares', 'alice')).json(), { ownerId: 'alice', viewers: ['carol'] })
      t.same((await get(app, '/shares/watching', 'bob')).json(), { viewerId: 'bob', owners: [] })
      const again = await del(app, 'alice', 'bob')
      t.equal(again.statusCode, 404)
      t.match(again.json(), { statusCode: 404, error: 'Not Found', message: /bob/ })
      t.equal((await del(app, 'bob', 'alice')).statusCode, 404, 'only the owner withdraws: bob never granted alice anything')
    })

    t.test('at most 100 viewers: the 101st PUT answers 409, a repeated grant still answers 200, and a DELETE makes room', async (t) => {
      const app = await store.build(t)
      const viewers = Array.from({ length: 100 }, (_, i) => `v${String(i).padStart(3, '0')}`)
      for (const v of viewers) await grant(app, 'alice', v)
      const over = await put(app, 'alice', 'v100')
      t.equal(over.statusCode, 409)
      t.match(over.json(), { statusCode: 409, error: 'Conflict', message: /100/ })
      t.equal((await put(app, 'alice', 'v050')).statusCode, 200, 'granting an existing viewer again is not a new one')
      t.same((await get(app, '/shares', 'alice')).json().viewers, viewers, 'the 100 viewers, sorted, and not v100')
      t.equal((await del(app, 'alice', 'v000')).statusCode, 204)
      t.equal((await put(app, 'alice', 'v100')).statusCode, 200, 'room again after a withdrawal')
      t.equal((await put(app, 'bob', 'v100')).statusCode, 200, 'the cap is per owner')
    })
  })

  t.test(`[${store.name}] a grant lets the viewer read through get, subscribe, the legacy frame and history; withdrawing it forbids them again at the next request`, async (t) => {
    const app = await store.build(t)
    await ingest(app, 'alice', 72)
    const frames = await open(t, app, 'bob')

    t.test('before the grant all four are forbidden', async (t) => {
      await assertAccess(t, app, frames, 'bob', 'alice', false, 72)
    })
    t.test('after the grant all four work', async (t) => {
      await grant(app, 'alice', 'bob')
      await assertAccess(t, app, frames, 'bob', 'alice', true, 72)
    })
    t.test('after DELETE the subscription ends with revoked and all four are forbidden again', async (t) => {
      t.equal((await del(app, 'alice', 'bob')).statusCode, 204)
      t.same(await frames.json(2000), { type: 'revoked', userId: 'alice' })
      await assertAccess(t, app, frames, 'bob', 'alice', false, 72)
    })
    t.test('granting again opens them again', async (t) => {
      await grant(app, 'alice', 'bob')
      await assertAccess(t, app, frames, 'bob', 'alice', true, 72)
    })
  })

  t.test(`[${store.name}] DELETE ends the viewer's live subscription to the owner within 2 s with revoked; the viewer's other subscriptions and other viewers go on`, async (t) => {
    const app = await store.build(t)
    await grant(app, 'alice', 'bob')
    await grant(app, 'carol', 'bob')
    await grant(app, 'alice', 'dave')
    const bob = await open(t, app, 'bob')
    const bob2 = await open(t, app, 'bob')
    const dave = await open(t, app, 'dave')
    const alice = await open(t, app, 'alice')
    for (const owner of ['alice', 'carol', 'bob']) await subscribe(bob, owner)
    await subscribe(bob2, 'alice')
    await subscribe(dave, 'alice')
    await subscribe(alice, 'alice')
    t.equal(app.hub.subscriptionCount, 6)

    const started = Date.now()
    t.equal((await del(app, 'alice', 'bob')).statusCode, 204)
    t.same(await bob.json(2000), { type: 'revoked', userId: 'alice' }, 'bob\'s socket is told')
    t.same(await bob2.json(2000), { type: 'revoked', userId: 'alice' }, 'and so is bob\'s other socket')
    t.ok(Date.now() - started < 2000, 'within 2 s')
    t.ok(await eventually(() => app.hub.subscriptionCount === 4, 2000), 'both of bob\'s subscriptions to alice are gone from the hub')

    for (const [user, bpm] of [['alice', 80], ['carol', 81], ['bob', 82]] as const) await ingest(app, user, bpm)
    t.match(await dave.json(2000), { type: 'reading', userId: 'alice', bpm: 80 }, 'another viewer of alice keeps receiving')
    t.match(await alice.json(2000), { type: 'reading', userId: 'alice', bpm: 80 }, 'alice keeps receiving her own')
    const seen: any[] = []
    await bob.until((f) => { seen.push(f); return f.type === 'reading' && f.userId === 'bob' }, 2000)
    t.same(seen.filter((f) => f.type === 'reading').map((f) => f.userId), ['carol', 'bob'], 'bob keeps carol and himself, and no reading of alice reaches him')
    await bob.quiet(300, 'nothing more reaches bob')
    await bob2.quiet(0, 'nor bob\'s other socket')
    t.match(await bob.ask({ type: 'unsubscribe', userId: 'carol' }), { type: 'unsubscribed', userId: 'carol' })
    t.match(await bob.ask({ type: 'get', userId: 'carol' }), { type: 'current', userId: 'carol', bpm: 81 }, 'carol\'s grant still stands')
    t.match(await bob.ask({ type: 'get', userId: 'alice' }), { type: 'error', code: 'forbidden' })
  })
}

t.test('[redis] withdrawn grants are seen by every instance: a viewer subscribed on instance B gets revoked when the owner DELETEs through instance A', async (t) => {
  const prefix = uniquePrefix()
  const a = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  const b = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  await ingest(a, 'alice', 66)
  const bob = await open(t, b, 'bob')
  t.match(await bob.ask({ type: 'get', userId: 'alice' }), { type: 'error', code: 'forbidden' }, 'forbidden on B before the grant')

  await grant(a, 'alice', 'bob')
  t.match(await bob.ask({ type: 'get', userId: 'alice' }), { type: 'current', userId: 'alice', bpm: 66 }, 'a grant made through A holds on B')
  await subscribe(bob, 'alice')
  await subscribe(bob, 'bob')
  t.equal(b.hub.subscriptionCount, 2)
  await ingest(a, 'alice', 67)
  t.match(await bob.json(2000), { type: 'reading', userId: 'alice', bpm: 67 }, 'live before the withdrawal')

  const started = Date.now()
  t.equal((await del(a, 'alice', 'bob')).statusCode, 204)
  t.same(await bob.json(2000), { type: 'revoked', userId: 'alice' }, 'B\'s socket is told')
  t.ok(Date.now() - started < 2000, `within 2 s (took ${Date.now() - started} ms)`)
  t.ok(await eventually(() => b.hub.subscriptionCount === 1, 2000), 'the hub on B dropped the subscription')

  await ingest(a, 'alice', 68)
  await ingest(a, 'bob', 90)
  t.match(await bob.until((f) => f.type === 'reading', 2000), { userId: 'bob', bpm: 90 }, 'bob\'s own subscription on B goes on')
  await bob.quiet(300, 'no reading of alice reaches B\'s socket')
  t.match(await bob.ask({ type: 'get', userId: 'alice' }), { type: 'error', code: 'forbidden' }, 'forbidden on B afterwards')
  t.equal((await get(b, '/heart/alice/readings', 'bob')).statusCode, 403, 'history through B too')
})

t.test('redis: a grant withdrawn while the feed connection was away is caught when it resumes', async (t) => {
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { HEART_KEY_PREFIX: prefix, INGEST_API_KEYS: KEY })
  await grant(app, 'alice', 'bob')
  const bob = await open(t, app, 'bob')
  await subscribe(bob, 'alice')
  const raw = (await sharedRedis()).client()
  t.teardown(() => raw.disconnect())
  // The grant disappears without its announcement, as when the PUBLISH found the feed disconnected.
  await raw.srem(`{${prefix}alice}:viewers`, 'bob')
  await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  t.match(await bob.until((f) => f.type === 'revoked', 3000), { type: 'revoked', userId: 'alice' })
  t.ok(await eventually(() => app.hub.subscriptionCount === 0, 2000), 'the subscription is gone')
})

/** Removes a grant the way a revoke whose announcement was lost leaves it: the set changed, no instance was told. */
async function loseRevocation (prefix: string, ownerId: string, viewerId: string): Promise<void> {
  const raw = (await sharedRedis()).client()
  try {
    await raw.srem(`{${prefix}${ownerId}}:viewers`, viewerId)
  } finally {
    raw.disconnect()
  }
}

t.test('a withdrawal whose announcement was lost ends the subscription at the next periodic re-check (GRANT_RECHECK_MS)', async (t) => {
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix, GRANT_RECHECK_MS: '200' })
  await grant(app, 'lo', 'lv')
  await grant(app, 'lo2', 'lv')
  const frames = await openSocket(app, 'lv')
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'subscribe', userId: 'lo' }), { type: 'subscribed', userId: 'lo' })
  t.match(await frames.ask({ type: 'subscribe', userId: 'lo2' }), { type: 'subscribed', userId: 'lo2' })
  t.match(await frames.ask({ type: 'subscribe', userId: 'lv' }), { type: 'subscribed', userId: 'lv' })
  await loseRevocation(prefix, 'lo', 'lv')
  t.same(await frames.json(3000), { type: 'revoked', userId: 'lo' }, 'revoked within a few re-check periods')
  await ingest(app, 'lo', 70)
  await ingest(app, 'lo2', 71)
  await ingest(app, 'lv', 72)
  const next: any[] = []
  while (next.filter((f) => f.type === 'reading').length < 2) next.push(await frames.json())
  t.same(next.filter((f) => f.type === 'reading').map((f) => `${f.userId} ${f.bpm}`).sort(), ['lo2 71', 'lv 72'], 'the other subscriptions stay live')
  t.notOk(next.some((f) => f.userId === 'lo'), 'nothing more of lo')
})

t.test('refresh re-checks the grants of the socket\'s subscriptions: revoked comes before refreshed', async (t) => {
  const prefix = uniquePrefix()
  // The periodic re-check at its default (a minute) does not come into this test.
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: prefix })
  await grant(app, 'ro', 'rv')
  await grant(app, 'ro2', 'rv')
  const frames = await openSocket(app, 'rv')
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'subscribe', userId: 'ro' }), { type: 'subscribed', userId: 'ro' })
  t.match(await frames.ask({ type: 'subscribe', userId: 'ro2' }), { type: 'subscribed', userId: 'ro2' })
  await loseRevocation(prefix, 'ro', 'rv')
  t.same(await frames.ask({ type: 'refresh', token: bearer('rv').authorization.slice(7), reqId: 'f' }), { type: 'revoked', userId: 'ro' })
  t.match(await frames.json(), { type: 'refreshed', reqId: 'f' })
  await ingest(app, 'ro2', 75)
  t.match(await frames.until((f) => f.type === 'reading'), { type: 'reading', userId: 'ro2', bpm: 75 }, 'the granted subscription stays')
})
