import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Cluster } from 'ioredis'
import { build, eventually, openSocket, token, uniquePrefix } from './helper.js'
import { RedisCluster } from './redis-cluster.js'

const KEY = 'cluster-key'

const cluster = await RedisCluster.start()
t.teardown(() => cluster.stop())

/** Two instances on the cluster with a key prefix of their own. */
async function pair (t: Test): Promise<{ a: FastifyInstance, b: FastifyInstance, prefix: string }> {
  const prefix = uniquePrefix()
  const env = { REDIS_CLUSTER_NODES: cluster.nodeList, HEART_KEY_PREFIX: prefix, INGEST_API_KEYS: KEY }
  return { a: await build(t, env), b: await build(t, env), prefix }
}

async function ingest (app: FastifyInstance, userId: string, body: object): Promise<string[]> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: body })
  if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
  return res.json().ids
}

t.test('on a 3-master Redis Cluster: a user\'s keys share one slot, ingest and history work, pushes cross instances over sharded pub/sub', async (t) => {
  const { a, b, prefix } = await pair(t)
  t.match((await a.inject('/health')).json(), { status: 'ok', store: 'redis' })

  // Users spread over the shards: each one's subscriber on B, the publisher on A.
  const users = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']
  const sockets = await Promise.all(users.map(async (u) => await openSocket(b, u)))
  for (const [i, s] of sockets.entries()) t.match(await s.ask({ type: 'subscribe', userId: users[i] }), { type: 'subscribed' })
  for (const [i, u] of users.entries()) {
    const [id] = await ingest(a, u, { bpm: 60 + i })
    t.match(await sockets[i].json(1000), { type: 'reading', userId: u, id, bpm: 60 + i }, `${u} reached B within a second`)
  }

  const raw = new Cluster(cluster.nodeList.split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })))
  t.teardown(() => raw.disconnect())
  const slots = await Promise.all(['', ':ts', ':history', ':live'].map(async (suffix) => {
    const key = suffix === '' ? `${prefix}u1` : `{${prefix}u1}${suffix}`
    return Number(await raw.call('CLUSTER', 'KEYSLOT', key))
  }))
  t.equal(new Set(slots).size, 1, 'legacy key, ts, history and channel hash to one slot')
  t.equal(await raw.get(`${prefix}u1`), '60', 'the legacy key holds the decimal bpm')
  const masters = new Set(await Promise.all(users.map(async (u) => {
    const slot = Number(await raw.call('CLUSTER', 'KEYSLOT', `${prefix}${u}`))
    return raw.slots[slot]?.[0]
  })))
  t.ok(masters.size > 1, `users live on ${masters.size} different masters`)
  // Sharded subscriptions live on the master that owns the slot: count them over all masters.
  const shardNumsub = async (channel: string): Promise<number> => {
    let n = 0
    for (const node of raw.nodes('master')) n += Number((await node.call('PUBSUB', 'SHARDNUMSUB', channel) as [string, number])[1])
    return n
  }
  t.equal(await shardNumsub(`{${prefix}u1}:live`), 1, 'one sharded subscription for u1, on its shard')

  const history = await a.inject({ url: '/heart/u1/readings', headers: { authorization: `Bearer ${token('u1')}` } })
  t.equal(history.json().readings.length, 1)
  for (const s of sockets) s.ws.terminate()
  t.ok(await eventually(() => b.hub.topicCount === 0), 'B releases every subscription')
  t.ok(await eventually(async () => await shardNumsub(`{${prefix}u1}:live`) === 0), 'and Redis holds none')
})

t.test('on the cluster: subscribe with since replays then goes live without gap or duplicate, across instances', async (t) => {
  const { a, b } = await pair(t)
  const first = await ingest(a, 'u1', { readings: [{ bpm: 60 }, { bpm: 61 }, { bpm: 62 }] })
  const frames = await openSocket(b, 'u1')
  frames.ws.send(JSON.stringify({ type: 'subscribe', userId: 'u1', since: first[0] }))
  const posting = (async () => {
    const ids: string[] = []
    for (let i = 0; i < 20; i++) ids.push(...await ingest(a, 'u1', { bpm: 100 + i }))
    return ids
  })()
  t.match(await frames.json(), { type: 'subscribed', userId: 'u1' })
  const expected = [first[1], first[2], ...await posting]
  const got: string[] = []
  while (got.length < expected.length) got.push((await frames.until((f) => f.type === 'reading')).id)
  t.same(got, expected)
  await frames.quiet(150, 'nothing more')
  frames.ws.terminate()
})

t.test('on the cluster: sharing and revocation reach the viewer on another instance', async (t) => {
  const { a, b } = await pair(t)
  t.equal((await a.inject({ method: 'PUT', url: '/shares/bob', headers: { authorization: `Bearer ${token('alice')}` } })).statusCode, 200)
  const bob = await openSocket(b, 'bob')
  t.match(await bob.ask({ type: 'subscribe', userId: 'alice' }), { type: 'subscribed' })
  t.equal((await a.inject({ method: 'DELETE', url: '/shares/bob', headers: { authorization: `Bearer ${token('alice')}` } })).statusCode, 204)
  t.match(await bob.until((f) => f.type === 'revoked', 2000), { type: 'revoked', userId: 'alice' })
  t.match(await bob.ask({ type: 'get', userId: 'alice' }), { type: 'error', code: 'forbidden' })
  bob.ws.terminate()
})

t.test('on the cluster: a resend is stored once, also sent to two instances at once, and the duplicate check shares the user\'s slot', async (t) => {
  const { a, b, prefix } = await pair(t)
  const post = async (app: FastifyInstance, body: object): Promise<{ accepted: number, duplicates: number, ids: string[] }> => {
    const res = await app.inject({ method: 'POST', url: '/heart/dup/readings', headers: { 'x-api-key': KEY }, payload: body })
    if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  const ts = 1_764_115_200_000
  const rounds = await Promise.all(Array.from({ length: 20 }, async (_v, i) => {
    const body = { readings: [{ bpm: 60 + i, ts: ts + i }] }
    return await Promise.all([post(a, body), post(b, body)])
  }))
  for (const [i, [ra, rb]] of rounds.entries()) {
    t.same(ra.ids, rb.ids, `reading ${i}: one id from both instances`)
    t.equal(ra.accepted + rb.accepted, 1, `reading ${i}: stored once`)
  }
  const resend = await post(a, { readings: [{ bpm: 60, ts }, { bpm: 99, ts: ts + 100 }] })
  t.match(resend, { accepted: 1, duplicates: 1, ids: [rounds[0][0].ids[0]] })
  const history = await b.inject({ url: '/heart/dup/readings?limit=100', headers: { authorization: `Bearer ${token('dup')}` } })
  t.equal(history.json().readings.length, 21, 'twenty readings and the one new one')

  const raw = new Cluster(cluster.nodeList.split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })))
  t.teardown(() => raw.disconnect())
  const slot = async (key: string): Promise<number> => Number(await raw.call('CLUSTER', 'KEYSLOT', key))
  t.equal(await slot(`{${prefix}dup}:ids-by-ts`), await slot(`${prefix}dup`), 'ids-by-ts is in the legacy key\'s slot')
  t.equal(await raw.hlen(`{${prefix}dup}:ids-by-ts`), 21)
})

t.test('a withdrawal the cluster half-fails: the owner\'s shard decides, so the grant is gone, the viewer is told, and the stale watching entry is filtered', async (t) => {
  const prefix = uniquePrefix()
  const app = await build(t, { REDIS_CLUSTER_NODES: cluster.nodeList, HEART_KEY_PREFIX: prefix, INGEST_API_KEYS: KEY })
  const raw = new Cluster(cluster.nodeList.split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })))
  t.teardown(() => raw.disconnect())
  const slots = await raw.call('CLUSTER', 'SLOTS') as Array<[number, number, [string, number]]>
  const portOf = async (key: string): Promise<number> => {
    const slot = Number(await raw.call('CLUSTER', 'KEYSLOT', key))
    return slots.find(([from, to]) => slot >= from && slot <= to)![2][1]
  }
  // An owner and a viewer whose keys live on different masters.
  const ownerPort = await portOf(`{${prefix}owner}:viewers`)
  let viewer = ''
  let viewerPort = ownerPort
  for (let i = 0; viewerPort === ownerPort; i++) {
    viewer = `v${i}`
    viewerPort = await portOf(`{${prefix}${viewer}}:watching`)
  }
  const viewerNode = cluster.nodes.find((n) => n.port === viewerPort)!
  const owner = { authorization: `Bearer ${token('owner')}` }
  t.equal((await app.inject({ method: 'PUT', url: `/shares/${viewer}`, headers: owner })).statusCode, 200)
  const frames = await openSocket(app, viewer)
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'subscribe', userId: 'owner' }), { type: 'subscribed' })

  // The viewer's shard stops answering: the second write of the withdrawal cannot happen.
  viewerNode.pause()
  let resumed = false
  const resume = (): void => { if (!resumed) { resumed = true; viewerNode.resume() } }
  t.teardown(resume)
  const del = await app.inject({ method: 'DELETE', url: `/shares/${viewer}`, headers: owner })
  t.equal(del.statusCode, 204, 'the owner is told it is withdrawn: it is, by the owner\'s own set')
  t.same(await frames.json(3000), { type: 'revoked', userId: 'owner' }, 'and the viewer\'s subscription ends')
  t.same((await app.inject({ method: 'GET', url: '/shares', headers: owner })).json().viewers, [])
  resume()
  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/health' })).statusCode === 200, 10_000), 'the shard answers again')
  const watching = await app.inject({ method: 'GET', url: '/shares/watching', headers: { authorization: `Bearer ${token(viewer)}` } })
  t.equal(watching.statusCode, 200)
  t.same(watching.json().owners, [], 'a stale entry in the viewer\'s list is not shown')
  t.equal((await app.inject({ method: 'GET', url: '/heart/owner/readings', headers: { authorization: `Bearer ${token(viewer)}` } })).statusCode, 403)
})
