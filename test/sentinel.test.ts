import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { RedisServer, bearer, build, eventually, freePort, openSocket } from './helper.js'

const KEY = 'sentinel-key'

/** A real Sentinel (`redis-server --sentinel`) watching the test's master as `heart`. */
async function startSentinel (t: Test, masterPort: number): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'heart-sentinel-'))
  const port = await freePort()
  const conf = join(dir, 'sentinel.conf')
  await writeFile(conf, [
    `port ${port}`,
    'bind 127.0.0.1',
    `dir ${dir}`,
    `sentinel monitor heart 127.0.0.1 ${masterPort} 1`,
    // Quick to act, so the failover tests take seconds: down after 1 s without an answer.
    'sentinel down-after-milliseconds heart 1000',
    'sentinel failover-timeout heart 10000'
  ].join('\n') + '\n')
  const proc = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' })
  t.teardown(async () => {
    proc.kill('SIGKILL')
    await once(proc, 'exit').catch(() => {})
    await rm(dir, { recursive: true, force: true })
  })
  const ready = await eventually(async () => {
    const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0 })
    c.on('error', () => {})
    try {
      await c.connect()
      const addr = await c.call('SENTINEL', 'get-master-addr-by-name', 'heart') as string[] | null
      return addr?.[1] === String(masterPort)
    } finally {
      c.disconnect()
    }
  }, 10000, 100)
  if (!ready) throw new Error('sentinel did not come up')
  return port
}

t.test('with REDIS_SENTINELS and REDIS_SENTINEL_NAME the service finds the master through Sentinel', async (t) => {
  const master = await RedisServer.start()
  t.teardown(() => master.stop())
  const sentinelPort = await startSentinel(t, master.port)
  const app = await build(t, { REDIS_SENTINELS: `127.0.0.1:${sentinelPort}`, REDIS_SENTINEL_NAME: 'heart', INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 's:' })
  t.match((await app.inject('/health')).json(), { status: 'ok', store: 'redis' })
  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  const res = await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': KEY }, payload: { bpm: 66 } })
  t.equal(res.statusCode, 202)
  t.match(await frames.json(), { type: 'reading', bpm: 66 })
  const raw = master.client()
  t.teardown(() => raw.disconnect())
  t.equal(await raw.get('s:u1'), '66', 'written to the master Sentinel named')
  frames.ws.terminate()
})

/** `INFO replication` of a server as a map. */
async function replication (server: RedisServer): Promise<Map<string, string>> {
  const c = server.client()
  try {
    const text = await c.info('replication')
    return new Map(text.split('\r\n').filter((l) => l.includes(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]))
  } finally {
    c.disconnect()
  }
}

async function startReplica (t: Test, master: RedisServer): Promise<RedisServer> {
  // Diskless load: the replica keeps the master's data in memory only, as every test server does.
  const replica = await RedisServer.start(['--replicaof', '127.0.0.1', String(master.port), '--repl-diskless-load', 'on-empty-db'])
  t.teardown(() => replica.stop())
  t.ok(await eventually(async () => (await replication(replica)).get('master_link_status') === 'up', 10000, 50), `replica on ${replica.port} in sync`)
  return replica
}

/** The master's address as the Sentinel gives it, and how many replicas it knows. */
async function sentinelView (port: number): Promise<{ masterPort: string | undefined, replicas: number }> {
  const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 })
  c.on('error', () => {})
  try {
    const addr = await c.call('SENTINEL', 'get-master-addr-by-name', 'heart') as string[] | null
    const replicas = await c.call('SENTINEL', 'replicas', 'heart') as unknown[]
    return { masterPort: addr?.[1], replicas: replicas.length }
  } finally {
    c.disconnect()
  }
}

async function ingest (app: FastifyInstance, bpm: number, ts: number): Promise<{ status: number, id?: string, message?: string }> {
  const res = await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': KEY }, payload: { bpm, ts } })
  const body = res.json() as { ids?: string[], message?: string }
  return { status: res.statusCode, id: body.ids?.[0], message: body.message }
}

/** The history, once reads answer: after a failover each of the service's connections finds the new master on its own. */
async function historyIds (app: FastifyInstance): Promise<string[]> {
  let ids: string[] = []
  await eventually(async () => {
    const res = await app.inject({ url: '/heart/u1/readings?limit=1000', headers: bearer('u1') })
    if (res.statusCode !== 200) throw new Error(`history: ${res.statusCode} ${res.body}`)
    ids = (res.json() as { readings: Array<{ id: string }> }).readings.map((r) => r.id)
    return true
  }, 10000, 50)
  return ids
}

/**
 * Kills the master, then measures how long until the Sentinel names another one and until
 * ingest answers 202 again; returns the id of that first reading.
 */
async function failover (t: Test, app: FastifyInstance, master: RedisServer, sentinelPort: number, ts: number): Promise<string> {
  await master.stop()
  const killed = Date.now()
  let promotedMs = -1
  let accepted: string | undefined
  const done = await eventually(async () => {
    if (promotedMs < 0 && (await sentinelView(sentinelPort)).masterPort !== String(master.port)) promotedMs = Date.now() - killed
    const r = await ingest(app, 100, ts)
    accepted = r.id
    return r.status === 202
  }, 30000, 100)
  t.ok(done, 'ingest answers 202 again after the failover')
  t.ok(promotedMs >= 0, 'the Sentinel promoted a replica')
  t.comment(`failover: replica promoted ${promotedMs} ms after the kill, ingest 202 again after ${Date.now() - killed} ms`)
  return accepted as string
}

t.test('Sentinel failover at the default settings: ingest answers 202 again, the socket keeps getting live readings, nothing acknowledged is lost', async (t) => {
  const master = await RedisServer.start()
  t.teardown(() => master.stop())
  const replica = await startReplica(t, master)
  const sentinelPort = await startSentinel(t, master.port)
  t.ok(await eventually(async () => (await sentinelView(sentinelPort)).replicas === 1, 15000, 100), 'the Sentinel knows the replica')
  const app = await build(t, { REDIS_SENTINELS: `127.0.0.1:${sentinelPort}`, REDIS_SENTINEL_NAME: 'heart', INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'f:' })
  const frames = await openSocket(app, 'u1')
  t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed' })
  const ts = Date.now() - 60_000
  const before: string[] = []
  for (let i = 0; i < 10; i++) {
    const r = await ingest(app, 60 + i, ts + i)
    t.equal(r.status, 202)
    before.push(r.id as string)
    t.match(await frames.until((f) => f.type === 'reading'), { id: r.id }, 'live before the failover')
  }
  // Asynchronous replication: at REDIS_WAIT_REPLICAS=0 only what reached the replica survives the kill.
  t.ok(await eventually(async () => {
    const info = await replication(master)
    return info.get('slave0')?.includes(`offset=${info.get('master_repl_offset') as string},`) === true
  }, 5000, 50), 'the replica holds every write')

  const id = await failover(t, app, master, sentinelPort, ts + 50)
  t.match(await frames.until((f) => f.type === 'reading' && f.id === id, 10000), { userId: 'u1' }, 'the same socket gets the new reading')
  t.equal(frames.closeCode, null, 'without reconnecting')
  const history = await historyIds(app)
  t.same(history.slice(0, 10), before, 'every reading acknowledged before the failover is in history')
  t.ok(history.includes(id))
  const promoted = replica.client()
  t.teardown(() => promoted.disconnect())
  t.equal((await replication(replica)).get('role'), 'master', 'the replica is the master now')
  t.equal(await promoted.xlen('{f:u1}:history'), history.length, 'and it holds the history')
  frames.ws.terminate()
})

t.test('REDIS_WAIT_REPLICAS=1: a reading acknowledged just before the master dies survives the failover; with no replica confirming, 503 "not confirmed"', async (t) => {
  const master = await RedisServer.start()
  t.teardown(() => master.stop())
  const replicas = [await startReplica(t, master), await startReplica(t, master)]
  const sentinelPort = await startSentinel(t, master.port)
  t.ok(await eventually(async () => (await sentinelView(sentinelPort)).replicas === 2, 15000, 100), 'the Sentinel knows both replicas')
  const app = await build(t, { REDIS_SENTINELS: `127.0.0.1:${sentinelPort}`, REDIS_SENTINEL_NAME: 'heart', INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'w:', REDIS_WAIT_REPLICAS: '1' })
  const ts = Date.now() - 60_000
  const acknowledged: string[] = []
  for (let i = 0; i < 20; i++) {
    const r = await ingest(app, 60 + i, ts + i)
    t.equal(r.status, 202)
    acknowledged.push(r.id as string)
  }
  // The last 202 and the kill with nothing in between: only a replica's copy can keep it.
  const id = await failover(t, app, master, sentinelPort, ts + 50)
  const history = await historyIds(app)
  t.same(history.slice(0, 20), acknowledged, 'every acknowledged reading, the last one too, is in history after the failover')
  t.ok(history.includes(id))

  const newMaster = (await sentinelView(sentinelPort)).masterPort
  const left = replicas.find((r) => String(r.port) !== newMaster) as RedisServer
  left.pause()
  t.teardown(() => left.resume())
  const refused = await ingest(app, 70, ts + 60)
  t.equal(refused.status, 503, 'no replica confirms: 503')
  t.match(refused.message, /^not confirmed: 0 of 1 replicas .*; outcome unknown: resend the same readings with their ts$/)
  left.resume()
  t.ok(await eventually(async () => (await ingest(app, 71, ts + 61)).status === 202, 10000, 100), '202 again once the replica answers')
})
