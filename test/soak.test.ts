/**
 * A bounded soak (issue 5, item 6): the compiled server with a private Redis, 500 real sockets
 * (50 users × 10, the per-user limit) for 20 s, every socket subscribed to its own user while
 * readings are ingested at ~50/s across the users and every socket queries (`get` or the legacy
 * text frame) about every 500 ms. Nothing may close unexpectedly, every socket must receive every
 * reading of its user exactly once and in order, and every query must be answered. Deliveries and
 * ingest-to-frame latency go to the diagnostic output. Longer soaks belong to the benchmark.
 *
 * The load generator runs in this process, so latencies include its own event-loop delays.
 */
import t from 'tap'
import { WebSocket } from 'ws'
import { RedisServer, eventually, sleep, startServer, token } from './helper.js'

const USERS = 50
const SOCKETS_PER_USER = 10
const DURATION_MS = 20_000
const READINGS_PER_S = 50
const QUERY_EVERY_MS = 500
const KEY = 'soak-ingest-key'
const TIMEOUT_MS = 5000

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)]
}

/** One soak client: its socket, what it was pushed, and its queries. */
class Client {
  readonly readings: Array<{ id: string, ts: number, at: number }> = []
  readonly problems: string[] = []
  closedUnexpectedly: number | null = null
  subscribed = false
  closing = false
  queries = 0
  answered = 0
  /** The query in flight: its kind and when it was sent. */
  outstanding: { kind: 'get' | 'legacy', reqId: number, at: number } | null = null
  readonly queryMs: number[] = []
  private nextReqId = 1

  constructor (readonly ws: WebSocket, readonly userId: string) {
    ws.on('message', (data) => this.onMessage(String(data)))
    ws.on('error', (err) => this.problems.push(`socket error: ${err.message}`))
    ws.on('close', (code) => { if (!this.closing) this.closedUnexpectedly = code })
  }

  private onMessage (text: string): void {
    const at = performance.now()
    if (/^\d+$/.test(text)) {
      if (this.outstanding?.kind !== 'legacy') {
        this.problems.push(`legacy answer ${text} with no legacy query in flight`)
        return
      }
      this.answer(at)
      return
    }
    let frame: any
    try {
      frame = JSON.parse(text)
    } catch {
      this.problems.push(`not JSON: ${text.slice(0, 100)}`)
      return
    }
    switch (frame.type) {
      case 'reading':
        if (frame.userId !== this.userId) this.problems.push(`reading of ${frame.userId}`)
        this.readings.push({ id: frame.id, ts: frame.ts, at })
        return
      case 'subscribed':
        this.subscribed = true
        return
      case 'status':
        return
      case 'current':
        if (this.outstanding?.kind !== 'get' || frame.reqId !== this.outstanding.reqId || frame.userId !== this.userId) {
          this.problems.push(`unexpected current frame ${text}`)
          return
        }
        this.answer(at)
        return
      default:
        this.problems.push(`unexpected frame ${text.slice(0, 200)}`)
    }
  }

  private answer (at: number): void {
    this.queryMs.push(at - (this.outstanding as { at: number }).at)
    this.outstanding = null
    this.answered++
  }

  /** Sends the next query, alternating `get` and the legacy frame; one at a time. */
  query (): void {
    if (this.outstanding !== null || this.ws.readyState !== WebSocket.OPEN) return
    const reqId = this.nextReqId++
    const kind = reqId % 2 === 0 ? 'get' : 'legacy'
    this.outstanding = { kind, reqId, at: performance.now() }
    this.queries++
    this.ws.send(kind === 'get' ? JSON.stringify({ type: 'get', userId: this.userId, reqId }) : this.userId)
  }
}

async function openClient (port: number, userId: string): Promise<Client> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/heart/current`, { headers: { authorization: `Bearer ${token(userId)}` }, handshakeTimeout: TIMEOUT_MS })
  const client = new Client(ws, userId)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)))
  })
  return client
}

t.test(`${USERS * SOCKETS_PER_USER} sockets for ${DURATION_MS / 1000} s with pushes and queries`, async (t) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const server = await startServer(t, {
    REDIS_URL: redis.url,
    HEART_KEY_PREFIX: 'soak:',
    INGEST_API_KEYS: KEY,
    // Each socket sends ~2 frames/s: the production frame limit must leave it alone. Ten sockets per
    // user is exactly the per-user limit here (the default is 5).
    MAX_CONNECTIONS_PER_USER: String(SOCKETS_PER_USER),
    MESSAGE_RATE_LIMIT: '20'
  })
  const connect = async (userId: string): Promise<Client> => await openClient(server.port, userId)
  const users = Array.from({ length: USERS }, (_, i) => `soak-${i}`)
  const clients: Client[] = []
  t.teardown(() => { for (const c of clients) c.ws.terminate() })

  // Connect 50 at a time, then subscribe every socket to its own user before the first reading.
  for (let s = 0; s < SOCKETS_PER_USER; s++) {
    clients.push(...await Promise.all(users.map(connect)))
  }
  t.equal(clients.length, USERS * SOCKETS_PER_USER, 'every socket opened')
  for (const c of clients) c.ws.send(JSON.stringify({ type: 'subscribe', userId: c.userId, reqId: 'sub' }))
  t.ok(await eventually(() => clients.every((c) => c.subscribed), TIMEOUT_MS), 'every socket subscribed')

  // Ingest: reading k goes to user k mod 50 at start + k × 20 ms; its ts says which reading it is.
  const posted = new Map<string, Array<{ seq: number, id: string }>>(users.map((u) => [u, []]))
  const sentAt: number[] = []
  const ingestProblems: string[] = []
  const tsBase = Date.now()
  const start = performance.now()
  const total = Math.floor(DURATION_MS / 1000 * READINGS_PER_S)
  const inflight = new Set<Promise<void>>()
  async function post (seq: number): Promise<void> {
    const userId = users[seq % USERS]
    sentAt[seq] = performance.now()
    try {
      const res = await fetch(`${server.url}/heart/${userId}/readings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-api-key': KEY },
        body: JSON.stringify({ bpm: 40 + (seq % 150), ts: tsBase + seq }),
        signal: AbortSignal.timeout(TIMEOUT_MS)
      })
      const body = await res.json() as { ids?: string[] }
      if (res.status !== 202 || body.ids?.length !== 1) ingestProblems.push(`reading ${seq}: ${res.status} ${JSON.stringify(body)}`)
      else posted.get(userId)?.push({ seq, id: body.ids[0] })
    } catch (err) {
      ingestProblems.push(`reading ${seq}: ${(err as Error).message}`)
    }
  }

  // Queries: each socket every ~500 ms, spread evenly over the interval.
  const queryTimers = clients.map((c, i) => setTimeout(() => {
    c.query()
    queryTimers[i] = setInterval(() => c.query(), QUERY_EVERY_MS)
  }, (i * QUERY_EVERY_MS) / clients.length))

  for (let seq = 0; seq < total; seq++) {
    const wait = start + seq * (1000 / READINGS_PER_S) - performance.now()
    if (wait > 0) await sleep(wait)
    const p = post(seq)
    inflight.add(p)
    void p.then(() => inflight.delete(p))
  }
  await Promise.all(inflight)
  const ingestMs = performance.now() - start
  for (const timer of queryTimers) clearInterval(timer)

  t.same(ingestProblems, [], `every one of ${total} readings was acknowledged with 202`)
  // Readings of one user were posted a second apart, so their ids are in posting order.
  const expected = new Map([...posted].map(([u, list]) => [u, list.sort((a, b) => a.seq - b.seq).map((r) => r.id)]))
  const complete = (): boolean => clients.every((c) => c.readings.length >= (expected.get(c.userId)?.length ?? 0))
  t.ok(await eventually(complete, TIMEOUT_MS), 'every socket caught up')
  t.ok(await eventually(() => clients.every((c) => c.outstanding === null), TIMEOUT_MS), 'no query left unanswered')

  const wrong: string[] = []
  for (const [i, c] of clients.entries()) {
    const want = expected.get(c.userId) ?? []
    const got = c.readings.map((r) => r.id)
    if (got.length !== want.length || got.some((id, k) => id !== want[k])) {
      wrong.push(`socket ${i} (${c.userId}): ${got.length} readings, wanted ${want.length}; first difference at ${got.findIndex((id, k) => id !== want[k])}`)
    }
  }
  t.same(wrong, [], 'every socket received every reading of its user, once, in order')
  t.same(clients.flatMap((c) => c.problems), [], 'no unexpected frame, error frame or socket error')
  t.same(clients.filter((c) => c.closedUnexpectedly !== null).map((c) => `${c.userId}: ${c.closedUnexpectedly}`), [], 'no socket closed unexpectedly')
  const queries = clients.reduce((n, c) => n + c.queries, 0)
  const answered = clients.reduce((n, c) => n + c.answered, 0)
  t.equal(answered, queries, 'every query answered')
  t.ok(queries > clients.length * (DURATION_MS / QUERY_EVERY_MS) * 0.9, `queries kept coming (${queries})`)

  const latencies = clients.flatMap((c) => c.readings.map((r) => r.at - sentAt[r.ts - tsBase])).sort((a, b) => a - b)
  const queryMs = clients.flatMap((c) => c.queryMs).sort((a, b) => a - b)
  t.comment(`${total} readings in ${(ingestMs / 1000).toFixed(1)} s (${(total / ingestMs * 1000).toFixed(1)}/s), ${latencies.length} deliveries to ${clients.length} sockets`)
  t.comment(`ingest-to-frame latency: p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms, max ${percentile(latencies, 100).toFixed(1)} ms`)
  t.comment(`${answered} queries answered: p50 ${percentile(queryMs, 50).toFixed(1)} ms, p99 ${percentile(queryMs, 99).toFixed(1)} ms, max ${percentile(queryMs, 100).toFixed(1)} ms`)

  // Close cleanly; the server stays up and healthy and logged no error.
  for (const c of clients) { c.closing = true; c.ws.close(1000) }
  t.ok(await eventually(() => clients.every((c) => c.ws.readyState === WebSocket.CLOSED), TIMEOUT_MS), 'every socket closed cleanly')
  t.equal(server.proc.exitCode, null, 'the server is still running')
  const health = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  t.equal(health.status, 200, '/health is 200')
  t.same(server.logs.filter((line) => /uncaught|unhandled/i.test(line) || /"level":(50|60)/.test(line)), [], 'no error in the server log')
})
