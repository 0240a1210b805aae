/**
 * A restart behind nginx, as production does it: two compiled instances behind the project's
 * nginx.conf (real nginx, TLS; test/nginx-harness.ts), clients watching one user over wss, a
 * device posting readings through nginx all along, and one instance taken down with SIGTERM in
 * the middle. Every client must end up with exactly the readings that were acknowledged, in order,
 * once each: the draining instance hands its clients over with 1001, and they resume with `since`.
 */
import t from 'tap'
import http from 'node:http'
import https from 'node:https'
import { WebSocket } from 'ws'
import { compareIds } from '../src/heart/reading.js'
import { eventually, sleep, token, within, type ServerProcess } from './helper.js'
import { HOST, Refused, openWebSocket, startStack, type Answer } from './nginx-harness.js'

const GRACE_MS = 1500
const API_KEY = 'restart-test-device-key'
const USER = 'u1'
const CLIENTS = 20
const READINGS = 200
const EVERY_MS = 20
/** The instance is signalled once this many readings have been sent. */
const SIGNAL_AFTER = 50
/** How often a POST answered 502 or 503 is sent again before the poster gives up on it. */
const MAX_ATTEMPTS = 20
const RETRY_MS = 50
const TIMEOUT_MS = 5000

const stack = await startStack(t, { INGEST_API_KEYS: API_KEY, SHUTDOWN_GRACE_MS: String(GRACE_MS), TRUST_PROXY: 'loopback' })

/**
 * A mini program's socket as the protocol asks a client to behave: on any close it reconnects
 * through nginx at once and subscribes again with `since` = the last id it saw, so the server
 * replays what it missed before going live again. It records every reading id it receives.
 */
class Watcher {
  readonly ids: string[] = []
  /** Close codes of its sockets, with when they came, while it was meant to stay connected. */
  readonly closes: Array<{ code: number, at: number }> = []
  /** Anything unexpected: error frames, refused upgrades, socket errors. */
  readonly problems: string[] = []
  subscribed = 0
  /** Readings received on a later socket that were stored before it asked to resubscribe: what `since` had to catch up. */
  caughtUp = 0
  private resubscribedAt: number | null = null
  private ws: WebSocket | null = null
  private stopped = false

  constructor (readonly name: string) {
    this.connect()
  }

  private connect (): void {
    if (this.stopped) return
    const ws = new WebSocket(stack.wss, { headers: { authorization: `Bearer ${token(USER)}` }, handshakeTimeout: TIMEOUT_MS, ...stack.trust })
    this.ws = ws
    ws.on('open', () => {
      const since = this.ids.at(-1)
      if (since !== undefined) this.resubscribedAt = Date.now()
      ws.send(JSON.stringify(since === undefined ? { type: 'subscribe', userId: USER } : { type: 'subscribe', userId: USER, since }))
    })
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data))
      if (frame.type === 'reading' && frame.userId === USER) {
        this.ids.push(frame.id)
        if (this.resubscribedAt !== null && frame.ts < this.resubscribedAt) this.caughtUp++
      } else if (frame.type === 'subscribed') this.subscribed++
      else if (frame.type !== 'status') this.problems.push(`unexpected frame ${String(data)}`)
    })
    // ws follows an error (a refused upgrade included) with 'close'.
    ws.on('error', (err) => { if (!this.stopped) this.problems.push(err.message) })
    ws.on('close', (code) => {
      if (this.stopped) return
      this.closes.push({ code, at: Date.now() })
      // At once after a 1001, as the protocol asks; after a failed connect, not in a tight loop.
      if (code === 1001) this.connect()
      else setTimeout(() => this.connect(), RETRY_MS)
    })
  }

  stop (): void {
    this.stopped = true
    this.ws?.terminate()
  }
}

interface Posted {
  /** Statuses of every attempt, in order. */
  statuses: Array<number | string>
  id?: string
}

/** An HTTP POST of one reading, answered or failed; never rejects. */
async function postOnce (agent: https.Agent, bpm: number): Promise<{ status: number | string, id?: string }> {
  try {
    const res = await stack.request('POST', `/heart/${USER}/readings`, { 'content-type': 'application/json', 'x-api-key': API_KEY }, JSON.stringify({ bpm }), { agent })
    return res.status === 202 ? { status: 202, id: (JSON.parse(res.body) as { ids: string[] }).ids[0] } : { status: res.status }
  } catch (err) {
    return { status: (err as NodeJS.ErrnoException).code ?? (err as Error).message }
  }
}

/**
 * The rule the poster (a device or gateway) follows. 202: stored. 503: not stored (an instance
 * that is closing answers 503 before routing the request; ingest answers 503 when the store did
 * not take it), so the same reading is sent again. 502: nginx's answer when the instance reset a
 * connection nginx had already sent the POST on: a connection it accepted, or had queued, but
 * not read from when it closed at the end of the drain. nginx does not resend a POST it sent
 * (proxy_next_upstream without non_idempotent), and from outside a 502 could also mean stored;
 * in a SIGTERM restart it cannot, because the instance answers every request it has read before
 * it closes. So the poster sends it again, and the test checks the claim: an extra stored
 * reading would show in history and at every client as an id nobody got a 202 for. Anything
 * else (another status, a failed connection to nginx) fails the test.
 */
const RETRIED = new Set<number | string>([502, 503])

async function post (agent: https.Agent, bpm: number): Promise<Posted> {
  const posted: Posted = { statuses: [] }
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const { status, id } = await postOnce(agent, bpm)
    posted.statuses.push(status)
    if (status === 202) return { ...posted, id }
    if (!RETRIED.has(status)) return posted
    await sleep(RETRY_MS)
  }
  return posted
}

/**
 * A request to `server` directly whose body arrives in two parts: the second is sent only when
 * `finish()` is called, so the request can be kept in flight across the start of a shutdown.
 */
function slowPost (server: ServerProcess, body: string): { finish: () => void, answer: Promise<Answer> } {
  const req = http.request({
    host: HOST,
    port: server.port,
    method: 'POST',
    path: `/heart/${USER}/readings`,
    agent: false,
    timeout: 15000,
    headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), 'x-api-key': API_KEY }
  })
  const answer = new Promise<Answer>((resolve, reject) => {
    req.on('response', (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
    req.on('timeout', () => req.destroy(new Error('in-flight POST timed out')))
    req.on('error', reject)
  })
  const half = Math.floor(body.length / 2)
  req.write(body.slice(0, half))
  return { finish: () => req.end(body.slice(half)), answer }
}

async function health (server: ServerProcess): Promise<{ status: number, body: any }> {
  const res = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  return { status: res.status, body: await res.json() }
}

/** Sockets of USER each instance has opened so far, from its log. */
function opened (server: ServerProcess): number {
  return server.logs.filter((l) => l.includes('"msg":"socket open"') && l.includes(`"userId":"${USER}"`)).length
}

/** What is wrong with `got` against `want`, in a few words, or '' when they are equal. */
function difference (got: string[], want: string[]): string {
  const wanted = new Set(want)
  const seen = new Set<string>()
  const duplicated = got.filter((id) => seen.has(id) || !(seen.add(id)))
  const missing = want.filter((id) => !seen.has(id))
  const unknown = got.filter((id) => !wanted.has(id))
  const outOfOrder = got.some((id, i) => i > 0 && compareIds(got[i - 1], id) >= 0)
  const parts = [
    duplicated.length > 0 ? `duplicated ${duplicated.join(' ')}` : '',
    missing.length > 0 ? `missing ${missing.length} (${missing.slice(0, 5).join(' ')}…)` : '',
    unknown.length > 0 ? `never acknowledged ${unknown.join(' ')}` : '',
    outOfOrder ? 'out of order' : ''
  ].filter((p) => p !== '')
  return parts.join('; ')
}

t.test('SIGTERM on one of two instances behind nginx: drain, 1001, reconnect with since, and every acknowledged reading reaches every client once, in order', async (t) => {
  const started = Date.now()
  const [victim, survivor] = stack.instances

  const watchers = Array.from({ length: CLIENTS }, (_, i) => new Watcher(`w${i}`))
  t.teardown(() => { for (const w of watchers) w.stop() })
  // Every client is subscribed before the first reading is posted, so each must see all of them.
  t.ok(await eventually(() => watchers.every((w) => w.subscribed === 1) && opened(victim) + opened(survivor) === CLIENTS, TIMEOUT_MS),
    `all ${CLIENTS} clients subscribed through nginx`)
  const onVictim = opened(victim)
  t.ok(onVictim > 0 && opened(survivor) > 0, `least_conn spread the sockets over both instances (${onVictim} and ${opened(survivor)})`)

  // The device: one reading every EVERY_MS whatever happens to the ones before, over kept-alive TLS connections to nginx.
  const agent = new https.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const sends: Array<Promise<Posted>> = []
  const stream = (async () => {
    const t0 = Date.now()
    for (let i = 0; i < READINGS; i++) {
      await sleep(t0 + i * EVERY_MS - Date.now())
      sends.push(post(agent, 60 + (i % 60)))
    }
    return await Promise.all(sends)
  })()

  t.ok(await eventually(() => sends.length >= SIGNAL_AFTER, TIMEOUT_MS), `${SIGNAL_AFTER} readings sent before the restart`)
  const signalled = Date.now()
  victim.proc.kill('SIGTERM')

  // Asked directly: nginx passes /health through from whichever instance it picks.
  t.ok(await eventually(async () => (await health(victim)).status === 503, 500, 10), 'the victim answers /health with 503 at once')
  t.match((await health(victim)).body, { status: 'unavailable', reason: 'shutting down' })
  t.equal((await health(survivor)).status, 200, 'the survivor stays healthy')

  const refused = await openWebSocket(t, `ws://${HOST}:${victim.port}/heart/current`, { headers: { authorization: `Bearer ${token(USER)}` } }).then(() => null, (e: unknown) => e)
  t.type(refused, Refused, 'a new socket straight to the victim is refused during the drain')
  t.equal((refused as Refused).status, 503)

  // A request that is still arriving when the drain ends and the victim starts closing: it must be answered, and stored.
  await sleep(signalled + GRACE_MS - 500 - Date.now())
  t.ok(victim.proc.exitCode === null, 'the victim is still running before the drain ends')
  const inFlight = slowPost(victim, JSON.stringify({ bpm: 99 }))
  t.ok(await eventually(() => watchers.some((w) => w.closes.length > 0), GRACE_MS + TIMEOUT_MS), 'the drain has ended: sockets are being closed')
  await sleep(150)
  inFlight.finish()
  const finished = await within(inFlight.answer, TIMEOUT_MS, 'the in-flight POST')
  t.equal(finished.status, 202, `a POST in flight when the victim began closing is answered 202 (${finished.body})`)
  const inFlightId = (JSON.parse(finished.body) as { ids?: string[] }).ids?.[0]
  t.type(inFlightId, 'string')

  // Requests in flight get 3 s after the drain; a loaded machine (CI runs two test files at once) may add seconds.
  t.equal(await within(victim.exitCode, 3000 + 2 * TIMEOUT_MS, 'the victim exiting'), 0, 'the victim exits 0')

  const results = await within(stream, 15000, 'the stream of readings')
  const retried = results.filter((r) => r.statuses.length > 1)
  const failed = results.filter((r) => r.id === undefined)
  t.same(failed.map((r) => r.statuses), [], 'every POST ends 202, after resending the ones answered 502 or 503')
  t.comment(`${results.length} readings posted; ${retried.length} sent again: ${JSON.stringify(retried.map((r) => r.statuses))}`)
  if (retried.some((r) => r.statuses.includes(502))) {
    t.comment(`nginx on the 502s:\n${(await stack.errorLog()).split('\n').filter((l) => l.includes('POST')).join('\n')}`)
  }
  const acked = [...results.flatMap((r) => r.id ?? []), ...(inFlightId === undefined ? [] : [inFlightId])].sort(compareIds)
  t.equal(new Set(acked).size, READINGS + 1, 'each acknowledged reading has an id of its own')

  // The victim's sockets, and only they, were closed, with 1001, once the drain was over.
  const closes = watchers.flatMap((w) => w.closes)
  t.same(closes.map((c) => c.code), Array(onVictim).fill(1001), `the ${onVictim} sockets on the victim were closed with 1001, no other socket was closed`)
  t.ok(closes.every((c) => c.at >= signalled + GRACE_MS - 50), `not before the drain of ${GRACE_MS} ms ended`)
  t.equal(opened(survivor), CLIENTS, `the survivor now holds all ${CLIENTS} sockets: the victim's clients reconnected through nginx to it`)
  t.ok(watchers.every((w) => w.subscribed === 1 + w.closes.length), 'each reconnected client subscribed again')
  const log = await stack.accessLog()
  const servedBy = (s: ServerProcess): number => log.split('\n').filter((l) => l.includes('"POST /heart/') && l.includes(`upstream=${HOST}:${s.port} `)).length
  t.comment(`POSTs nginx passed to the victim: ${servedBy(victim)}, to the survivor: ${servedBy(survivor)}; readings caught up with since: ${watchers.map((w) => w.caughtUp).join(' ')}`)

  // What the store holds for u1 is exactly what was acknowledged: no POST answered 502 or 503 was stored.
  const history = await stack.request('GET', `/heart/${USER}/readings?limit=1000`, { authorization: `Bearer ${token(USER)}` })
  t.equal(history.status, 200)
  t.equal(difference((JSON.parse(history.body) as { readings: Array<{ id: string }> }).readings.map((r) => r.id), acked), '', 'history holds exactly the acknowledged readings')

  const last = acked[acked.length - 1]
  t.ok(await eventually(() => watchers.every((w) => w.ids.at(-1) === last), TIMEOUT_MS), 'every client has received the last reading')
  await sleep(200)
  for (const w of watchers) w.stop()
  for (const w of watchers) {
    // Equal to '' exactly when w.ids equals acked; says what differs otherwise, without a 200-line diff.
    t.equal(difference(w.ids, acked), '', `${w.name} (${w.closes.length > 0 ? 'moved from the victim' : 'on the survivor'}) got every acknowledged reading once, in order`)
  }
  t.same(watchers.flatMap((w) => w.problems), [], 'no error frame, refused upgrade or socket error reached a client')
  t.comment(`restart scenario took ${Date.now() - started} ms`)
})
