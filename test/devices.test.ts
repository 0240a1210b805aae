import { createHash } from 'node:crypto'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { Cluster } from 'ioredis'
import type { Env } from '../plugins/config.js'
import { RedisServer, bearer, build, buildWithRedis, eventually, sharedRedis, startServer, token, uniquePrefix, type ServerProcess } from './helper.js'
import { RedisCluster } from './redis-cluster.js'
import { byCreation } from '../src/heart/store.js'

const SERVICE_KEY = 'service-key'
const ENV: Env = { INGEST_API_KEYS: SERVICE_KEY }
const KEY = /^hgd\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$/

interface Created { deviceId: string, name: string, key: string, createdAt: number }

async function create (app: FastifyInstance, ownerId: string, name = 'band-1'): Promise<Created> {
  const res = await app.inject({ method: 'POST', url: '/devices', headers: bearer(ownerId), payload: { name } })
  if (res.statusCode !== 201) throw new Error(`POST /devices answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

async function ingest (app: FastifyInstance, userId: string, key: string | null, bpm = 72): Promise<number> {
  const headers: Record<string, string> = key === null ? {} : { 'x-api-key': key }
  return (await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers, payload: { bpm } })).statusCode
}

async function list (app: FastifyInstance, ownerId: string): Promise<any[]> {
  const res = await app.inject({ url: '/devices', headers: bearer(ownerId) })
  if (res.statusCode !== 200) throw new Error(`GET /devices answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

async function remove (app: FastifyInstance, ownerId: string, deviceId: string): Promise<number> {
  return (await app.inject({ method: 'DELETE', url: `/devices/${deviceId}`, headers: bearer(ownerId) })).statusCode
}

const builders = [
  { store: 'the embedded store', build },
  { store: 'Redis', build: buildWithRedis }
] as const

for (const { store, build: builder } of builders) {
  t.test(`device keys on ${store}`, async (t) => {
    const app = await builder(t, ENV)

    t.test('POST /devices answers 201 with the key once; the key writes its owner\'s readings and no one else\'s', async (t) => {
      const before = Date.now()
      const res = await app.inject({ method: 'POST', url: '/devices', headers: bearer('alice'), payload: { name: 'band-1' } })
      t.equal(res.statusCode, 201)
      t.equal(res.headers['cache-control'], 'no-store', 'no cache keeps the key')
      const body = res.json() as Created
      t.same(Object.keys(body).sort(), ['createdAt', 'deviceId', 'key', 'name'])
      t.equal(body.name, 'band-1')
      t.ok(body.createdAt >= before && body.createdAt <= Date.now())
      t.match(body.key, KEY)
      t.same(KEY.exec(body.key)?.slice(1, 3), ['alice', body.deviceId], 'the key names its owner and device')

      t.equal(await ingest(app, 'alice', body.key), 202, 'the owner\'s readings')
      const history = await app.inject({ url: '/heart/alice/readings', headers: bearer('alice') })
      t.match(history.json().readings, [{ bpm: 72 }])
      const other = await app.inject({ method: 'POST', url: '/heart/bob/readings', headers: { 'x-api-key': body.key }, payload: { bpm: 72 } })
      t.equal(other.statusCode, 403, 'another user\'s readings')
      t.match(other.json(), { statusCode: 403, error: 'Forbidden', message: /device key writes only its owner/ })
      t.same((await app.inject({ url: '/heart/bob/readings', headers: bearer('bob') })).json().readings, [], 'nothing written for bob')
      t.equal(await ingest(app, 'bob', SERVICE_KEY), 202, 'a service key still writes for anyone')
    })

    t.test('GET /devices lists the owner\'s devices, oldest first, with lastSeenAt and never a key', async (t) => {
      const a = await create(app, 'carol', 'band-1')
      const b = await create(app, 'carol', 'bedside gateway')
      await create(app, 'dave')
      const first = await app.inject({ url: '/devices', headers: bearer('carol') })
      t.equal(first.statusCode, 200)
      // Oldest first; two created within the same millisecond (as here, often) come by deviceId.
      t.same(first.json(), [
        { deviceId: a.deviceId, name: 'band-1', createdAt: a.createdAt, lastSeenAt: null },
        { deviceId: b.deviceId, name: 'bedside gateway', createdAt: b.createdAt, lastSeenAt: null }
      ].sort(byCreation))
      t.notOk(first.body.includes(a.key.split('.')[3]) || first.body.includes(b.key.split('.')[3]), 'no secret in the list')
      const before = Date.now()
      t.equal(await ingest(app, 'carol', b.key), 202)
      const seen = (await list(app, 'carol')).find((d) => d.deviceId === b.deviceId)
      t.ok(seen.lastSeenAt >= before && seen.lastSeenAt <= Date.now(), 'lastSeenAt is the time of the ingest')
      t.equal((await list(app, 'carol')).find((d) => d.deviceId === a.deviceId).lastSeenAt, null, 'the other device was not seen')
      t.equal(await ingest(app, 'dave', b.key), 403)
      t.equal((await list(app, 'dave')).length, 1, 'dave sees his own device only')
    })

    t.test('DELETE /devices/:deviceId answers 204 and the key answers 401 from then on; 404 for unknown or another owner\'s', async (t) => {
      const mine = await create(app, 'erin')
      const theirs = await create(app, 'frank')
      t.equal(await ingest(app, 'erin', mine.key), 202)
      t.equal(await remove(app, 'erin', theirs.deviceId), 404, 'frank\'s device is not erin\'s to delete')
      t.equal(await ingest(app, 'frank', theirs.key), 202, 'and it still works')
      const res = await app.inject({ method: 'DELETE', url: `/devices/${mine.deviceId}`, headers: bearer('erin') })
      t.equal(res.statusCode, 204)
      t.equal(res.body, '')
      t.equal(await ingest(app, 'erin', mine.key), 401, 'the deleted key is refused at the next request')
      t.same(await list(app, 'erin'), [])
      const again = await app.inject({ method: 'DELETE', url: `/devices/${mine.deviceId}`, headers: bearer('erin') })
      t.equal(again.statusCode, 404)
      t.match(again.json(), { statusCode: 404, message: 'no such device' })
      t.equal(await remove(app, 'erin', 'AAAAAAAAAAAAAAAA'), 404, 'a well-formed id of no device')
    })

    t.test('keys that are not a live device\'s answer 401', async (t) => {
      const d = await create(app, 'gina')
      const [, owner, id, secret] = d.key.split('.')
      const flipped = (secret[0] === 'A' ? 'B' : 'A') + secret.slice(1)
      const bad = [
        `hgd.${owner}.${id}.${flipped}`, // the right device, another secret
        `hgd.bob.${id}.${secret}`, // the secret under another owner
        `hgd.${owner}.AAAAAAAAAAAAAAAA.${secret}`, // another device id
        `hgd.${owner}.${id}.${secret}.x`,
        `hgd.${owner}.${id}`,
        `xyz.${owner}.${id}.${secret}`,
        `hgd.${owner}!.${id}.${secret}`,
        d.key + ' ',
        ''
      ]
      for (const key of bad) t.equal(await ingest(app, 'gina', key), 401, JSON.stringify(key))
      t.equal(await ingest(app, 'gina', null), 401, 'no key at all')
      t.equal(await ingest(app, 'gina', d.key), 202, 'the real key still works')
    })

    t.test('at most 20 devices per owner: the 21st answers 409, and deleting one makes room', async (t) => {
      const made: Created[] = []
      for (let i = 0; i < 20; i++) made.push(await create(app, 'hank', `band-${i}`))
      const res = await app.inject({ method: 'POST', url: '/devices', headers: bearer('hank'), payload: { name: 'one too many' } })
      t.equal(res.statusCode, 409)
      t.match(res.json(), { statusCode: 409, error: 'Conflict', message: /at most 20 devices/ })
      t.equal((await list(app, 'hank')).length, 20)
      t.equal(await ingest(app, 'hank', made[19].key), 202, 'the twentieth works')
      await create(app, 'ivy', 'not counted against hank')
      t.equal(await remove(app, 'hank', made[0].deviceId), 204)
      t.equal((await create(app, 'hank', 'after a delete')).name, 'after a delete')
    })

    t.test('the devices routes need a token, and bad input answers 400 naming the field', async (t) => {
      for (const req of [
        { method: 'POST' as const, url: '/devices', payload: { name: 'x' } },
        { method: 'GET' as const, url: '/devices' },
        { method: 'DELETE' as const, url: '/devices/AAAAAAAAAAAAAAAA' }
      ]) {
        const res = await app.inject(req)
        t.equal(res.statusCode, 401, `${req.method} without a token`)
        t.equal(res.headers['www-authenticate'], 'Bearer')
        const withKey = await app.inject({ ...req, headers: { 'x-api-key': SERVICE_KEY } })
        t.equal(withKey.statusCode, 401, `${req.method} with a service key instead`)
      }
      const bodies: Array<[unknown, RegExp]> = [
        [{}, /body must have required property 'name'/],
        [{ name: '' }, /body\/name must NOT have fewer than 1 characters/],
        [{ name: 'x'.repeat(65) }, /body\/name must NOT have more than 64 characters/],
        [{ name: 'a\nb' }, /body\/name must match pattern/],
        [{ name: 5 }, /body\/name must be string/],
        [{ name: 'x', key: 'chosen' }, /body\/key is not an accepted property/]
      ]
      for (const [payload, message] of bodies) {
        const res = await app.inject({ method: 'POST', url: '/devices', headers: bearer('judy'), payload: payload as object })
        t.equal(res.statusCode, 400, JSON.stringify(payload))
        t.match(res.json(), { statusCode: 400, message })
      }
      t.same(await list(app, 'judy'), [], 'nothing was created')
      const badId = await app.inject({ method: 'DELETE', url: '/devices/short', headers: bearer('judy') })
      t.equal(badId.statusCode, 400)
      t.match(badId.json(), { message: /params\/deviceId/ })
    })

    t.test('owner ids with every allowed character work inside a key', async (t) => {
      const owner = 'A_b-9'.repeat(12) + 'abcd'
      const d = await create(app, owner)
      t.equal(await ingest(app, owner, d.key), 202)
      t.equal(await ingest(app, 'A_b-9', d.key), 403)
    })
  })
}

t.test('device keys never reach the logs, and no answer but the 201 carries one', async (t) => {
  const logs: string[] = []
  const app = await buildWithRedis(t, ENV, { logs })
  const d = await create(app, 'kim')
  const secret = d.key.split('.')[3]
  const answers: string[] = []
  for (const req of [
    { method: 'POST' as const, url: '/heart/kim/readings', headers: { 'x-api-key': d.key }, payload: { bpm: 72 } },
    { method: 'POST' as const, url: '/heart/lee/readings', headers: { 'x-api-key': d.key }, payload: { bpm: 72 } },
    { method: 'POST' as const, url: '/heart/kim/readings', headers: { 'x-api-key': d.key }, payload: { bpm: 5 } },
    { method: 'GET' as const, url: '/devices', headers: bearer('kim') },
    { method: 'DELETE' as const, url: `/devices/${d.deviceId}`, headers: bearer('kim') },
    { method: 'POST' as const, url: '/heart/kim/readings', headers: { 'x-api-key': d.key }, payload: { bpm: 72 } }
  ]) {
    const res = await app.inject(req)
    answers.push(`${res.statusCode} ${JSON.stringify(res.headers)} ${res.body}`)
  }
  t.same(answers.map((a) => Number(a.slice(0, 3))), [202, 403, 400, 200, 204, 401])
  t.ok(logs.length > 10, `requests were logged (${logs.length} lines at trace level)`)
  t.notOk(logs.some((l) => l.includes(secret)), 'no log line holds the secret')
  t.notOk(answers.some((a) => a.includes(secret)), 'no other answer holds it')
})

t.test('on Redis the device lives on its owner\'s keys as documented, with only a hash of the secret', async (t) => {
  const prefix = uniquePrefix()
  const app = await buildWithRedis(t, { ...ENV, HEART_KEY_PREFIX: prefix })
  const probe = (await sharedRedis()).client()
  t.teardown(() => probe.disconnect())
  const d = await create(app, 'max', 'band-1')
  const secret = d.key.split('.')[3]
  const record = JSON.parse(await probe.hget(`{${prefix}max}:devices`, d.deviceId) ?? 'null')
  t.same(record, { name: 'band-1', createdAt: d.createdAt, keyHash: createHash('sha256').update(secret).digest('hex') })
  t.equal(await probe.hget(`{${prefix}max}:devices-seen`, d.deviceId), null)
  t.equal(await ingest(app, 'max', d.key), 202)
  t.match(await probe.hget(`{${prefix}max}:devices-seen`, d.deviceId), /^\d{13}$/)
  const keys = await probe.keys(`*${prefix}*`)
  for (const key of keys) {
    const type = await probe.type(key)
    const dump = type === 'hash' ? JSON.stringify(await probe.hgetall(key)) : type === 'string' ? await probe.get(key) ?? '' : ''
    t.notOk(dump.includes(secret), `${key} does not hold the secret`)
  }
  t.equal(await remove(app, 'max', d.deviceId), 204)
  t.same(await probe.keys(`{${prefix}max}:devices*`), [], 'deleting the last device leaves no device keys behind')
})

t.test('while Redis is down a device key answers 503, not 401: the device retries instead of giving up its key', async (t) => {
  const server = await RedisServer.start()
  t.teardown(() => server.stop())
  const app = await build(t, { ...ENV, REDIS_URL: server.url, HEART_KEY_PREFIX: uniquePrefix() })
  const d = await create(app, 'pat')
  await server.stop()
  t.equal(await ingest(app, 'pat', d.key), 503)
  t.equal(await ingest(app, 'pat', 'hgd.pat.AAAAAAAAAAAAAAAA.' + 'A'.repeat(43)), 503, 'an unknown key cannot be told from a real one either')
  t.equal(await ingest(app, 'pat', 'not a device key'), 401, 'what is no device key needs no store')
  t.equal((await app.inject({ method: 'POST', url: '/devices', headers: bearer('pat'), payload: { name: 'x' } })).statusCode, 503)
  t.equal((await app.inject({ url: '/devices', headers: bearer('pat') })).statusCode, 503)
  // The test's Redis keeps nothing on disk: back up, it is empty, so a new device proves recovery.
  await server.start()
  t.ok(await eventually(async () => (await app.inject('/health')).statusCode === 200, 15000, 100), 'Redis is back')
  const fresh = await create(app, 'pat')
  t.equal(await ingest(app, 'pat', fresh.key), 202, 'devices work again')
})

/** POSTs one reading to a server process with the key given; the status. */
async function post (server: ServerProcess, userId: string, key: string): Promise<number> {
  const res = await fetch(`${server.url}/heart/${userId}/readings`, {
    method: 'POST',
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    body: JSON.stringify({ bpm: 72 }),
    signal: AbortSignal.timeout(5000)
  })
  return res.status
}

t.test('two instances on one Redis: a device created on A writes through B, and its deletion on A is refused by B at once', async (t) => {
  const redis = await sharedRedis()
  const env = { ...ENV, REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix() }
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  const auth = { authorization: `Bearer ${token('nina')}`, 'content-type': 'application/json' }
  const created = await fetch(`${a.url}/devices`, { method: 'POST', headers: auth, body: JSON.stringify({ name: 'band-1' }) })
  t.equal(created.status, 201)
  const d = await created.json() as Created
  t.equal(await post(b, 'nina', d.key), 202, 'B accepts the key A created')
  t.equal(await post(b, 'omar', d.key), 403, 'for its owner only')
  const listed = await (await fetch(`${b.url}/devices`, { headers: auth })).json() as any[]
  t.match(listed, [{ deviceId: d.deviceId, lastSeenAt: Number }], 'B lists it, seen')

  const deleted = await fetch(`${a.url}/devices/${d.deviceId}`, { method: 'DELETE', headers: { authorization: auth.authorization } })
  const deletedAt = performance.now()
  t.equal(deleted.status, 204)
  const first = await post(b, 'nina', d.key)
  const elapsed = performance.now() - deletedAt
  t.equal(first, 401, 'the first request on B after the 204 is refused')
  t.ok(elapsed < 1000, `within 1 s (${elapsed.toFixed(1)} ms from A's 204 to B's 401)`)
  t.comment(`delete on A -> 401 on B: ${elapsed.toFixed(1)} ms`)
  for (const server of [a, b]) t.notOk(server.logs.some((l) => l.includes(d.key.split('.')[3])), 'no instance logged the secret')
})

t.test('on a 3-master Redis Cluster: each owner\'s devices live on the owner\'s slot, on every shard', async (t) => {
  const cluster = await RedisCluster.start()
  t.teardown(() => cluster.stop())
  const prefix = uniquePrefix()
  const env = { ...ENV, REDIS_CLUSTER_NODES: cluster.nodeList, HEART_KEY_PREFIX: prefix }
  const [a, b] = [await build(t, env), await build(t, env)]
  const raw = new Cluster(cluster.nodeList.split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })))
  t.teardown(() => raw.disconnect())

  const owners = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']
  const masters = new Set<string | undefined>()
  for (const owner of owners) {
    const d = await create(a, owner)
    t.equal(await ingest(b, owner, d.key), 202, `${owner}'s key, created on A, writes through B`)
    t.equal(await ingest(b, owner === 'u1' ? 'u2' : 'u1', d.key), 403, `and only ${owner}'s`)
    t.match(await list(b, owner), [{ deviceId: d.deviceId, lastSeenAt: Number }])
    const slots = await Promise.all([`${prefix}${owner}`, `{${prefix}${owner}}:devices`, `{${prefix}${owner}}:devices-seen`]
      .map(async (key) => Number(await raw.call('CLUSTER', 'KEYSLOT', key))))
    t.equal(new Set(slots).size, 1, `${owner}'s devices share the slot of ${owner}'s heart rate`)
    masters.add(raw.slots[slots[0]]?.[0])
    t.equal(await remove(a, owner, d.deviceId), 204)
    t.equal(await ingest(b, owner, d.key), 401, 'deleted on A: refused by B')
  }
  t.ok(masters.size > 1, `owners live on ${masters.size} different masters`)

  const created = await Promise.all(Array.from({ length: 25 }, async (_v, i) =>
    (await a.inject({ method: 'POST', url: '/devices', headers: bearer('u7'), payload: { name: `band-${i}` } })).statusCode))
  t.same([created.filter((s) => s === 201).length, created.filter((s) => s === 409).length], [20, 5], '25 creations at once: 20 made, 5 refused')
  t.equal((await list(b, 'u7')).length, 20)
})
