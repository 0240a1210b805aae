import t, { type Test } from 'tap'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { MemoryStore } from '../src/heart/memory-store.js'
import { RedisStore } from '../src/heart/redis-store.js'
import { userKeys } from '../src/heart/redis-keys.js'
import { StoreUnavailableError } from '../src/heart/store.js'
import { RedisServer, eventually, sharedRedis, uniquePrefix } from './helper.js'
import { Recorder, storeContract } from './store-contract.js'

storeContract(t, 'embedded', async (_t, { historyMax }) => new MemoryStore(historyMax))

/** Connections as plugins/redis.ts makes them: commands fail fast while Redis is away. */
function connection (server: RedisServer): Redis {
  return new Redis({ host: '127.0.0.1', port: server.port, enableOfflineQueue: false, commandTimeout: 2000, maxRetriesPerRequest: 1 })
}

async function ready (client: Redis): Promise<void> {
  if (client.status !== 'ready') await once(client, 'ready')
}

/** A Redis store on `server` with a prefix of its own; the caller closes the store (and its feed connection), this closes the command connection. */
async function redisStore (t: Test, server: RedisServer, historyMax: number, prefix = uniquePrefix()): Promise<RedisStore> {
  const redis = connection(server)
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  // Opened before the command connection is ready: the feed duplicates it into a connection of its own.
  const store = await RedisStore.open({ redis, prefix, historyMax })
  await ready(redis)
  return store
}

storeContract(t, 'redis', async (t, { historyMax }) => await redisStore(t, await sharedRedis(), historyMax))

/** A Redis store with a prefix of its own, and a raw client to look at what it wrote. */
async function fixture (t: Test): Promise<{ prefix: string, store: RedisStore, probe: Redis }> {
  const server = await sharedRedis()
  const prefix = uniquePrefix()
  const store = await redisStore(t, server, 100, prefix)
  t.teardown(() => store.close())
  const probe = server.client()
  t.teardown(() => probe.disconnect())
  return { prefix, store, probe }
}

t.test('redis store specifics', async (t) => {
  t.test('PUBSUB NUMSUB of a user\'s channel is 1 while watched and 0 after unwatch', async (t) => {
    const { prefix, store, probe } = await fixture(t)
    const channel = userKeys(prefix, 'u1').channel
    const numsub = async (): Promise<number> => Number(((await probe.pubsub('NUMSUB', channel)) as unknown[])[1])
    t.equal(await numsub(), 0, 'before watch')
    await store.feed.watch('u1')
    t.equal(await numsub(), 1, 'while watched')
    await store.feed.unwatch('u1')
    t.equal(await numsub(), 0, 'after unwatch')
  })

  t.test('readings follow the documented layout: the decimal at <prefix><userId>, history in a stream', async (t) => {
    const { prefix, store, probe } = await fixture(t)
    const keys = userKeys(prefix, 'u1')
    const { ids } = await store.append('u1', [{ bpm: 72, ts: 1764115200000 }, { bpm: 75, ts: 1764115201000 }])
    t.equal(await probe.get(`${prefix}u1`), '75')
    t.equal(await probe.type(keys.history), 'stream')
    t.same((await probe.xrange(keys.history, '-', '+')).map(([id]) => id), ids)
  })

  t.test('the duplicate check is a hash ts → id beside the history, of the readings with their own ts only, trimmed with it', async (t) => {
    const server = await sharedRedis()
    const prefix = uniquePrefix()
    const store = await redisStore(t, server, 3, prefix)
    t.teardown(() => store.close())
    const probe = server.client()
    t.teardown(() => probe.disconnect())
    const keys = userKeys(prefix, 'u1')
    t.equal(keys.idsByTs, `{${prefix}u1}:ids-by-ts`)
    const { ids } = await store.append('u1', [{ bpm: 70, ts: 1000 }, { bpm: 71, ts: 2000, serverTs: true }, { bpm: 72, ts: 3000 }])
    t.equal(await probe.type(keys.idsByTs), 'hash')
    t.same(await probe.hgetall(keys.idsByTs), { 1000: ids[0], 3000: ids[2] })
    const next = await store.append('u1', [{ bpm: 73, ts: 4000 }, { bpm: 74, ts: 5000 }])
    t.equal(await probe.xlen(keys.history), 3)
    t.same(await probe.hgetall(keys.idsByTs), { 3000: ids[2], 4000: next.ids[0], 5000: next.ids[1] }, 'the trimmed reading\'s ts is forgotten')
  })

  t.test('after HISTORY_MAX is lowered, each ingest trims a bounded step until history is back at its maximum', async (t) => {
    const server = await sharedRedis()
    const prefix = uniquePrefix()
    const big = await redisStore(t, server, 100000, prefix)
    t.teardown(() => big.close())
    for (let i = 0; i < 50; i++) await big.append('u1', Array.from({ length: 500 }, (_v, j) => ({ bpm: 60, ts: 1_000_000 + i * 500 + j })))
    const small = await redisStore(t, server, 10, prefix)
    t.teardown(() => small.close())
    const probe = server.client()
    t.teardown(() => probe.disconnect())
    const keys = userKeys(prefix, 'u1')
    const lengths: number[] = []
    for (let i = 0; i < 4; i++) {
      await small.append('u1', [{ bpm: 61, ts: 2_000_000 + i }])
      lengths.push(await probe.xlen(keys.history))
    }
    t.same(lengths, [15000, 5000, 10, 10], 'at most 10 000 more than the readings added per call')
    t.equal(await probe.hlen(keys.idsByTs), 10, 'the duplicate check follows')
    t.equal((await small.append('u1', [{ bpm: 60, ts: 1_000_000 }])).duplicates, 0, 'a trimmed reading is new again')
  })

  t.test('a value another writer SETs has no known time and is replaced by the next appended reading', async (t) => {
    const server = await sharedRedis()
    const prefix = uniquePrefix()
    const store = await redisStore(t, server, 100, prefix)
    t.teardown(() => store.close())
    const writer = server.client()
    t.teardown(() => writer.disconnect())
    await writer.set(`${prefix}u1`, '64')
    t.same(await store.current('u1'), { bpm: 64, ts: null })
    t.same(await store.snapshot('u1'), { current: { bpm: 64, ts: null }, lastId: null, alerts: [] })
    await store.append('u1', [{ bpm: 70, ts: 1000 }])
    t.same(await store.current('u1'), { bpm: 70, ts: 1000 }, 'even an old reading is newer than an unknown time')
    await writer.set(`${prefix}u1`, '66')
    t.same(await store.current('u1'), { bpm: 66, ts: null }, 'a SET over the service\'s value: time unknown again')
    await writer.set(`${prefix}u1`, 'not a number')
    t.equal(await store.current('u1'), null, 'a value that is not a number is no reading')
  })

  t.test('while Redis is down every operation rejects with StoreUnavailableError; the feed resubscribes and resumes when it is back', async (t) => {
    const server = await RedisServer.start()
    t.teardown(() => server.stop())
    const store = await redisStore(t, server, 100)
    t.teardown(() => store.close())
    const rec = new Recorder()
    store.feed.setListener(rec)
    await store.feed.watch('u1')
    await store.append('u1', [{ bpm: 60, ts: 1 }])
    await rec.waitFor('u1', 1)

    await server.stop()
    const down = { name: 'StoreUnavailableError' }
    await t.rejects(store.ping(), StoreUnavailableError)
    await t.rejects(store.current('u1'), down)
    await t.rejects(store.snapshot('u1'), down)
    await t.rejects(store.append('u1', [{ bpm: 61, ts: 2 }]), down)
    await t.rejects(store.history('u1', { limit: 10 }), down)
    await t.rejects(store.history('u1', { since: '0-0', limit: 10 }), down)

    await server.start()
    t.ok(await eventually(async () => { await store.ping(); return true }, 15000, 100), 'answers again')
    t.ok(await eventually(() => rec.resumes >= 1, 15000), 'the feed reports it resumed')
    const [id] = (await store.append('u1', [{ bpm: 62, ts: 3 }])).ids
    t.same((await rec.waitFor('u1', 2))[1], { id, bpm: 62, ts: 3 }, 'and delivers again without a new watch')
  })

  t.test('the feed has a connection of its own, which closing the store closes', async (t) => {
    const server = await sharedRedis()
    const probe = server.client()
    t.teardown(() => probe.disconnect())
    const feeds = async (): Promise<number> => (await probe.client('LIST') as string).split('\n').filter((l) => l.includes(' name=heart-gateway-feed ')).length
    const before = await feeds()
    const store = await redisStore(t, server, 100)
    t.equal(await feeds(), before + 1, 'open')
    await store.close()
    t.ok(await eventually(async () => await feeds() === before, 3000), 'closed')
  })

  t.test('malformed messages on a watched user\'s channel are dropped with a warning, and the feed keeps delivering', async (t) => {
    const server = await sharedRedis()
    const redis = connection(server)
    redis.on('error', () => {})
    t.teardown(() => redis.disconnect())
    const warnings: string[] = []
    const log = { debug () {}, info () {}, error () {}, warn (obj: object | string, msg?: string) { warnings.push(msg ?? String(obj)) } }
    const prefix = uniquePrefix()
    const store = await RedisStore.open({ redis, prefix, historyMax: 100, log })
    t.teardown(() => store.close())
    await ready(redis)
    const probe = server.client()
    t.teardown(() => probe.disconnect())
    const rec = new Recorder()
    store.feed.setListener(rec)
    await store.feed.watch('u1')
    const channel = userKeys(prefix, 'u1').channel
    const malformed = ['not json', 'null', '5', '{}', '{"revoked":5}', '[null]', '[{"id":7,"bpm":60,"ts":1}]', '[{"id":"1-0\\"","bpm":60,"ts":1}]', '[{"id":"1-0","bpm":"60","ts":1}]']
    for (const m of malformed) await probe.publish(channel, m)
    const [id] = (await store.append('u1', [{ bpm: 61, ts: 2 }])).ids
    t.same(await rec.waitFor('u1', 1), [{ id, bpm: 61, ts: 2 }], 'only the appended reading is delivered')
    t.same(rec.revocations, [])
    t.equal(warnings.length, malformed.length, 'one warning per dropped message')
  })
})
