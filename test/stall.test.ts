import t from 'tap'
import { RedisServer, bearer, eventually, openWebSocket, sleep, startServer, type ServerProcess } from './helper.js'

const KEY = 'stall-key'
const UNKNOWN = 'outcome unknown: resend the same readings with their ts'

interface Answer { status: number, message?: string, duplicates?: number, ms: number }

async function post (server: ServerProcess, readings: Array<{ bpm: number, ts: number }>): Promise<Answer> {
  const sent = Date.now()
  try {
    const res = await fetch(`${server.url}/heart/u1/readings`, {
      method: 'POST',
      headers: { 'x-api-key': KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ readings }),
      signal: AbortSignal.timeout(10000)
    })
    const body = await res.json() as { message?: string, duplicates?: number }
    return { status: res.status, message: body.message, duplicates: body.duplicates, ms: Date.now() - sent }
  } catch {
    return { status: 0, ms: Date.now() - sent }
  }
}

async function health (server: ServerProcess): Promise<number> {
  try {
    return (await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(5000) })).status
  } catch {
    return 0
  }
}

t.test('a paused Redis (SIGSTOP): ingest answers 503 "outcome unknown" within about a second without queueing; everything recovers after SIGCONT', async (t) => {
  const redis = await RedisServer.start()
  t.teardown(async () => {
    redis.resume()
    await redis.stop()
  })
  const server = await startServer(t, { REDIS_URL: redis.url, INGEST_API_KEYS: KEY, HEART_KEY_PREFIX: 'st:' })
  const frames = await openWebSocket(t, `ws://127.0.0.1:${server.port}/heart/current`, { headers: bearer('u1') })
  t.match(await frames.ask({ type: 'subscribe', userId: 'u1' }), { type: 'subscribed' })
  const base = Date.now() - 60_000
  t.equal((await post(server, [{ bpm: 60, ts: base }])).status, 202)
  t.match(await frames.until((f) => f.type === 'reading'), { bpm: 60 })

  redis.pause()
  const paused = Date.now()
  const healthDown = eventually(async () => await health(server) === 503, 5000, 50).then((ok) => ok ? Date.now() - paused : -1)
  // A device posting one reading every 200 ms for 3 s, as in the field report.
  const sent: Array<{ bpm: number, ts: number }> = []
  const answers: Array<Promise<Answer>> = []
  for (let i = 1; i <= 15; i++) {
    const reading = { bpm: 60 + i, ts: base + i }
    sent.push(reading)
    answers.push(post(server, [reading]))
    await sleep(200)
  }
  const stalled = await Promise.all(answers)
  t.ok(stalled.every((a) => a.status === 503 && a.message?.includes(UNKNOWN) === true), 'every POST during the stall: 503 saying the outcome is unknown')
  t.ok(stalled.every((a) => a.ms < 2000), `none waits for the 2 s command timeout (slowest ${Math.max(...stalled.map((a) => a.ms))} ms)`)
  const first = stalled.findIndex((a) => a.status === 503)
  const firstAnswered = first * 200 + stalled[first].ms
  const later = stalled.filter((_a, i) => i * 200 > firstAnswered)
  t.ok(later.length >= 5, 'posts went on after the first 503')
  t.ok(later.every((a) => a.ms < 800), `once Redis is known not to answer, a POST is refused at once (slowest ${Math.max(...later.map((a) => a.ms))} ms)`)
  const healthMs = await healthDown
  t.ok(healthMs >= 0, '/health turns 503')
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'the socket stays open')
  t.match(await frames.ask({ type: 'get', userId: 'u1', reqId: 'g' }, 1500), { type: 'error', code: 'unavailable', reqId: 'g' }, 'a read is refused, not queued')
  t.comment(`stall: first 503 after ${stalled[first].ms} ms, later ones in ${Math.min(...later.map((a) => a.ms))}–${Math.max(...later.map((a) => a.ms))} ms; /health 503 after ${healthMs} ms`)

  redis.resume()
  const resumed = Date.now()
  t.ok(await eventually(async () => await health(server) === 200, 5000, 20), '/health is 200 again')
  const healthBack = Date.now() - resumed
  t.ok(await eventually(async () => (await post(server, [{ bpm: 99, ts: base + 99 }])).status === 202, 5000, 20), 'ingest answers 202 again')
  const ingestBack = Date.now() - resumed
  t.comment(`recovery after SIGCONT: /health 200 after ${healthBack} ms, ingest 202 after ${ingestBack} ms`)
  t.match(await frames.until((f) => f.type === 'reading' && f.bpm === 99), { userId: 'u1', ts: base + 99 }, 'the same socket gets live readings again, without reconnecting')

  const history = async (): Promise<Array<{ bpm: number, ts: number }>> => {
    const res = await fetch(`${server.url}/heart/u1/readings?limit=1000`, { headers: bearer('u1') })
    return (await res.json() as { readings: Array<{ bpm: number, ts: number }> }).readings
  }
  const storedAnyway = (await history()).filter((r) => sent.some((s) => s.ts === r.ts)).length
  t.comment(`${storedAnyway} of the ${sent.length} readings answered 503 were stored once Redis went on`)
  // The device does what the 503 says.
  const resend = await post(server, sent)
  t.equal(resend.status, 202, 'the resend is accepted')
  t.equal(resend.duplicates, storedAnyway, 'the readings the stall stored anyway are recognised as duplicates')
  const after = await history()
  for (const s of sent) t.equal(after.filter((r) => r.ts === s.ts && r.bpm === s.bpm).length, 1, `reading ${s.ts - base} is in history once`)
  t.equal(after.filter((r) => sent.some((s) => s.ts === r.ts)).length, sent.length, 'history: each reading once')
})
