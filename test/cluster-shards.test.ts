import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Cluster, type Redis } from 'ioredis'
import { compareIds } from '../src/heart/reading.js'
import { build, eventually, openSocket, uniquePrefix, type Frames } from './helper.js'
import { RedisCluster } from './redis-cluster.js'

const KEY = 'cluster-shards-key'
const USERS_PER_MASTER = 3
/** How long a reading posted into a gap may take to arrive: the subscriber's replacement and the fill from history. */
const RECOVERY_MS = 10000
/** How long a reading posted once every shard is subscribed again may take: live delivery. */
const LIVE_MS = 1000
/** ioredis names each shard subscriber connection after the cluster's own connectionName (plugins/redis.ts). */
const SHARD_SUBSCRIBER = 'ioredis-cluster(ssubscriber):heart-gateway'

const cluster = await RedisCluster.start()
t.teardown(() => cluster.stop())

/** A socket per user, and every reading id it received, in order. */
interface Watch {
  userId: string
  master: string
  frames: Frames
  got: string[]
  posted: string[]
}

async function ingest (app: FastifyInstance, userId: string, bpm: number): Promise<string> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: { bpm } })
  if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
  return res.json().ids[0]
}

/** The shard subscriber connections on one master, by client id. */
async function shardSubscribers (node: Redis): Promise<string[]> {
  const list = String(await node.call('CLIENT', 'LIST'))
  return list.split('\n').filter((line) => line.includes(` name=${SHARD_SUBSCRIBER} `)).map((line) => /\bid=(\d+)/.exec(line)?.[1] as string)
}

async function killShardSubscribers (node: Redis): Promise<number> {
  let killed = 0
  for (const id of await shardSubscribers(node)) killed += Number(await node.call('CLIENT', 'KILL', 'ID', id))
  return killed
}

/**
 * Kills the replacement ioredis opens for a killed shard subscriber as soon as it connects,
 * while it resubscribes (polled: there is no event for it on the server).
 */
async function killReplacement (node: Redis, old: Set<string>): Promise<void> {
  const deadline = Date.now() + RECOVERY_MS
  for (;;) {
    const fresh = (await shardSubscribers(node)).filter((id) => !old.has(id))
    if (fresh.length > 0) {
      for (const id of fresh) await node.call('CLIENT', 'KILL', 'ID', id)
      return
    }
    if (Date.now() > deadline) throw new Error('no replacement shard subscriber appeared')
  }
}

t.test('on the cluster: live delivery resumes after shard subscriber connections drop, and readings posted into the gap are filled from history', async (t) => {
  const prefix = uniquePrefix()
  const app = await build(t, { REDIS_CLUSTER_NODES: cluster.nodeList, HEART_KEY_PREFIX: prefix, INGEST_API_KEYS: KEY })
  const raw = new Cluster(cluster.nodeList.split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) })))
  t.teardown(() => raw.disconnect())
  await raw.ping()
  const masters = new Map(raw.nodes('master').map((n) => [`${n.options.host}:${n.options.port}`, n]))
  t.equal(masters.size, 3)

  // Users picked so that each master owns the channels of USERS_PER_MASTER of them.
  const byMaster = new Map<string, string[]>([...masters.keys()].map((m) => [m, []]))
  for (let i = 0; [...byMaster.values()].some((u) => u.length < USERS_PER_MASTER); i++) {
    const userId = `s${i}`
    const slot = Number(await raw.call('CLUSTER', 'KEYSLOT', `{${prefix}${userId}}:live`))
    const users = byMaster.get(raw.slots[slot][0])
    if (users !== undefined && users.length < USERS_PER_MASTER) users.push(userId)
  }
  const watches: Watch[] = []
  for (const [master, users] of byMaster) {
    for (const userId of users) {
      const frames = await openSocket(app, userId)
      t.match(await frames.ask({ type: 'subscribe', userId }), { type: 'subscribed' })
      const w: Watch = { userId, master, frames, got: [], posted: [] }
      frames.ws.on('message', (data) => {
        const f = JSON.parse(String(data))
        if (f.type === 'reading') w.got.push(f.id)
      })
      watches.push(w)
    }
  }
  t.teardown(() => { for (const w of watches) w.frames.ws.terminate() })

  let bpm = 60
  const postAll = async (): Promise<void> => {
    const posted = await Promise.all(watches.map(async (w) => await ingest(app, w.userId, bpm)))
    for (const [i, id] of posted.entries()) watches[i].posted.push(id)
    bpm = bpm >= 180 ? 60 : bpm + 1
  }
  // Each round is judged on what it posted, so that a reading lost in one round does not fail the next.
  let roundStart = 0
  const lost = (w: Watch): string[] => {
    const got = new Set(w.got)
    return w.posted.slice(roundStart).filter((id) => !got.has(id))
  }
  const delivered = (): boolean => watches.every((w) => lost(w).length === 0)
  const missing = (): string => watches.filter((w) => lost(w).length > 0).map((w) => `${w.userId} on ${w.master}: ${lost(w).length}`).join(', ')
  const shardNumsub = async (w: Watch): Promise<number> =>
    Number((await (masters.get(w.master) as Redis).call('PUBSUB', 'SHARDNUMSUB', `{${prefix}${w.userId}}:live`) as [string, number])[1])

  await postAll()
  t.ok(await eventually(delivered, LIVE_MS), 'live on every shard before any kill')

  const [m1, m2] = [...masters.values()]
  const modes: Array<[string, (t: Test) => Promise<void>]> = [
    ['one shard\'s subscriber killed', async (t) => {
      t.ok(await killShardSubscribers(m1) > 0, 'a shard subscriber connection was killed')
    }],
    ['two shards\' subscribers killed at once', async (t) => {
      const killed = await Promise.all([killShardSubscribers(m1), killShardSubscribers(m2)])
      t.ok(killed.every((n) => n > 0), 'both connections were killed')
    }],
    ['the replacement killed while it resubscribes', async (t) => {
      const old = new Set(await shardSubscribers(m1))
      t.ok(await killShardSubscribers(m1) > 0, 'a shard subscriber connection was killed')
      await killReplacement(m1, old)
    }],
    ['readings posted while the subscriber is replaced', async (t) => {
      t.ok(await killShardSubscribers(m1) > 0, 'a shard subscriber connection was killed')
      for (let i = 0; i < 5; i++) await postAll()
    }]
  ]

  for (let round = 1; round <= 3; round++) {
    for (const [mode, kill] of modes) {
      await t.test(`round ${round}: ${mode}`, async (t) => {
        roundStart = watches[0].posted.length
        await kill(t)
        // Into the gap: the subscriptions of the killed shards are not back yet.
        await postAll()
        const started = Date.now()
        t.ok(await eventually(delivered, RECOVERY_MS), `every reading posted into the gap arrives (missing: ${missing()})`)
        t.comment(`gap filled in ${Date.now() - started} ms`)
        t.ok(await eventually(async () => (await Promise.all(watches.map(shardNumsub))).every((n) => n === 1), RECOVERY_MS), 'every user is subscribed on its shard again')
        await postAll()
        t.ok(await eventually(delivered, LIVE_MS), `live again on every shard (missing: ${missing()})`)
        for (const w of watches) {
          const ordered = w.got.every((id, i) => i === 0 || compareIds(w.got[i - 1], id) < 0)
          t.ok(ordered, `${w.userId}: no reading twice, none out of order`)
        }
      })
    }
  }
  for (const w of watches) t.same(w.got, w.posted, `${w.userId}: every reading of every round, once, in order`)
})
