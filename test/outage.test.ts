import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import { Frames, RedisServer, eventually, postReading, sleep, startServer, token, type ServerProcess } from './helper.js'

const KEY = 'outage-key'

async function health (server: ServerProcess): Promise<number> {
  try {
    return (await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(3000) })).status
  } catch {
    return 0
  }
}

async function connect (server: ServerProcess, userId: string): Promise<Frames> {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/heart/current`, { headers: { authorization: `Bearer ${token(userId)}` } })
  const frames = new Frames(ws)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return frames
}

const CLOCK_TICKS_PER_S = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }))

/** CPU time (user + system) the server process has used so far, from /proc/<pid>/stat. */
async function cpuMs (server: ServerProcess): Promise<number> {
  const stat = await readFile(`/proc/${server.proc.pid as number}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may contain spaces: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 1000 / CLOCK_TICKS_PER_S
}

/** Every reading frame a socket receives, by user. */
function recordReadings (frames: Frames): Map<string, string[]> {
  const seen = new Map<string, string[]>()
  frames.ws.on('message', (data) => {
    const f = JSON.parse(String(data))
    if (f.type !== 'reading') return
    const list = seen.get(f.userId) ?? []
    list.push(f.id)
    seen.set(f.userId, list)
  })
  return seen
}

t.test('a Redis outage: 503s and unavailable frames while it is down, then recovery without reconnecting and without losing a reading', async (t) => {
  // Redis keeps what it acknowledged (AOF, fsync always) so "accepted before the outage" can be checked after it.
  const dir = await mkdtemp(join(tmpdir(), 'heart-outage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const redis = await RedisServer.start(['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir])
  t.teardown(() => redis.stop())
  const env = { REDIS_URL: redis.url, INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'o:' }
  const a = await startServer(t, env)
  const b = await startServer(t, env)

  // Watchers of u1 on both instances, a watcher of u2 that leaves during the outage, and one that joins.
  const onA = await connect(a, 'u1')
  const onB = await connect(b, 'u1')
  const leaver = await connect(b, 'u2')
  const idle = await connect(a, 'u2')
  const seenA = recordReadings(onA)
  const seenB = recordReadings(onB)
  for (const [f, u] of [[onA, 'u1'], [onB, 'u1'], [leaver, 'u2']] as const) {
    t.match(await f.ask({ type: 'subscribe', userId: u }), { type: 'subscribed' })
  }

  const accepted: string[] = []
  for (let i = 0; i < 10; i++) {
    const r = await postReading(i % 2 === 0 ? a : b, KEY, 'u1', 60 + i)
    t.equal(r.status, 202)
    accepted.push(r.id as string)
  }
  t.ok(await eventually(() => (seenA.get('u1')?.length ?? 0) === 10 && (seenB.get('u1')?.length ?? 0) === 10, 3000), 'live before the outage')
  for (const f of [onA, onB]) f.drain() // the readings were recorded; the next asks read their answers

  await redis.stop()
  const down = Date.now()
  t.ok(await eventually(async () => await health(a) === 503 && await health(b) === 503, 2000), '/health is 503 on both within 2 s')
  t.comment(`health turned 503 after ${Date.now() - down} ms`)
  t.equal((await postReading(a, KEY, 'u1', 99)).status, 503, 'ingest refuses instead of accepting what it cannot store')
  t.match(await onA.ask({ type: 'get', userId: 'u1', reqId: 'g' }), { type: 'error', code: 'unavailable', reqId: 'g' })
  t.match(await onB.ask('u1'), { type: 'error', code: 'unavailable' }, 'the original protocol gets the error frame too')
  t.match(await idle.ask({ type: 'subscribe', userId: 'u2' }), { type: 'error', code: 'unavailable' }, 'subscribing during the outage fails cleanly')
  t.same(await leaver.ask({ type: 'unsubscribe', userId: 'u2' }), { type: 'unsubscribed', userId: 'u2' }, 'unsubscribing during the outage works')
  for (const f of [onA, onB, leaver, idle]) t.match(await f.ask({ type: 'ping' }), { type: 'pong' }, 'sockets stay open')
  // No spinning: each server process (not this runner) stays nearly idle while Redis is away.
  const cpuBefore = await Promise.all([a, b].map(cpuMs))
  const measured = Date.now()
  await sleep(1000)
  const cpuUsed = (await Promise.all([a, b].map(cpuMs))).map((ms, i) => ms - cpuBefore[i])
  const elapsed = Date.now() - measured
  t.comment(`server CPU while Redis is down: ${cpuUsed.join(' ms and ')} ms in ${elapsed} ms`)
  for (const [i, used] of cpuUsed.entries()) t.ok(used < elapsed / 5, `instance ${'AB'[i]} used under a fifth of a core (${used} ms in ${elapsed} ms)`)

  await redis.start()
  const restarted = Date.now()
  // Post as soon as an instance answers again: its feed connection may still be reconnecting.
  let first: { status: number, id?: string } = { status: 0 }
  while (Date.now() - restarted < 10000) {
    first = await postReading(a, KEY, 'u1', 80)
    if (first.status === 202) break
    await sleep(20)
  }
  t.equal(first.status, 202, 'ingest works again within 10 s')
  accepted.push(first.id as string)
  t.ok(await eventually(async () => await health(a) === 200 && await health(b) === 200, 10000), '/health is 200 again on both within 10 s')
  t.comment(`healthy again ${Date.now() - restarted} ms after the restart`)
  for (let i = 0; i < 10; i++) {
    const r = await postReading(i % 2 === 0 ? b : a, KEY, 'u1', 81 + i)
    t.equal(r.status, 202)
    accepted.push(r.id as string)
  }
  t.ok(await eventually(() => (seenA.get('u1')?.length ?? 0) >= accepted.length && (seenB.get('u1')?.length ?? 0) >= accepted.length, 5000), 'readings after the restart reach the existing subscribers')
  await sleep(200)
  t.same(seenA.get('u1'), accepted, 'instance A: every accepted reading, once, in order')
  t.same(seenB.get('u1'), accepted, 'instance B: every accepted reading, once, in order')
  t.notOk(seenB.has('u2'), 'nothing for the user unsubscribed during the outage')

  const raw = redis.client()
  t.teardown(() => raw.disconnect())
  const history = await raw.xrange('{o:u1}:history', '-', '+') as Array<[string, string[]]>
  t.same(history.map(([id]) => id), accepted, 'every 202 is in history, nothing else is')
  const numsub = await raw.pubsub('NUMSUB', '{o:u1}:live', '{o:u2}:live') as Array<string | number>
  t.same(numsub, ['{o:u1}:live', 2, '{o:u2}:live', 0], 'subscriptions match the sockets still subscribed: u1 on both instances, u2 nowhere')

  t.match(await idle.ask({ type: 'subscribe', userId: 'u2' }), { type: 'subscribed' }, 'subscribing works again')
  t.same((await raw.pubsub('NUMSUB', '{o:u2}:live') as Array<string | number>)[1], 1)
  for (const f of [onA, onB, leaver, idle]) f.ws.terminate()
})
