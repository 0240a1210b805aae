import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { RedisServer, build, eventually, freePort, openSocket } from './helper.js'

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
    'sentinel down-after-milliseconds heart 5000'
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
