/**
 * Hostile input against the compiled server (issue 5, item 4). Property-based tests (fast-check,
 * fixed seeds, bounded runs) send random and adversarial frames, handshakes and ingest requests
 * to a real process over 127.0.0.1 and check every answer against the protocol: each frame gets
 * its one answer (an error frame with the right code and reqId, or the reply a valid frame earns)
 * and the socket still answers a ping; each refused handshake is a 401 JSON before the upgrade;
 * each ingest request gets 202 or its 4xx JSON. At the end the process is still up and healthy,
 * logged nothing uncaught, and Redis holds only keys of the documented layout with sane values,
 * exactly the readings that were acknowledged.
 */
import t from 'tap'
import fc from 'fast-check'
import { createHmac } from 'node:crypto'
import { request } from 'node:http'
import { WebSocket } from 'ws'
import { Frames, RedisServer, Refused, TEST_SECRET, startServer } from './helper.js'

const SEED = 20251126
const KEY = 'hostile-ingest-key'
const PREFIX = 'hx:'
const ME = 'alice'
/** alice's value, SET on the legacy key as an old writer would: readable, with no history to replay on subscribe. */
const MY_BPM = 72
const MAX_PAYLOAD = 4096
const TIMEOUT_MS = 3000
/** Fastify's default maxParamLength: a longer path segment is refused by the router (414) before the schema sees it. */
const MAX_PARAM_LENGTH = 100

/* The documented rules, restated here so the test does not borrow the server's own checks. */
const USER_ID = /^[A-Za-z0-9_-]{1,64}$/
const HISTORY_ID = /^[0-9]{1,20}-[0-9]{1,20}$/
const U64_MAX = 2n ** 64n - 1n
const BPM_MIN = 20
const BPM_MAX = 250
const TS_MIN = 1_000_000_000_000
const FUTURE_TOLERANCE_MS = 60_000
const BATCH_MAX = 500
const CLIENT_TYPES = ['get', 'ping', 'subscribe', 'unsubscribe', 'refresh']

const isUserId = (v: unknown): v is string => typeof v === 'string' && USER_ID.test(v)
function isHistoryId (v: unknown): boolean {
  if (typeof v !== 'string' || !HISTORY_ID.test(v)) return false
  const [ms, seq] = v.split('-').map(BigInt)
  return ms <= U64_MAX && seq <= U64_MAX
}

const redis = await RedisServer.start()
t.teardown(() => redis.stop())
// A start-up failure here ends the process before teardowns run: stop Redis on the way out.
const server = await startServer(t, {
  REDIS_URL: redis.url,
  HEART_KEY_PREFIX: PREFIX,
  INGEST_API_KEYS: KEY,
  // Every acknowledged reading must still be in history at the end: no trimming.
  HISTORY_MAX: '1000000'
}).catch(async (err: unknown) => { await redis.stop(); throw err })
const db = redis.client()
t.teardown(() => { db.disconnect() })
await db.set(PREFIX + ME, String(MY_BPM))

// ---------------------------------------------------------------------------------------------
// Clients

function b64url (value: string | Buffer): string {
  return Buffer.from(value).toString('base64url')
}

/** A JWT assembled by hand, so tests can sign anything (or nothing) under any header. */
function jwt (header: object, payload: object, secret: string | null = TEST_SECRET): string {
  const head = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`
  return `${head}.${secret === null ? '' : createHmac('sha256', secret).update(head).digest('base64url')}`
}

const inAnHour = (): number => Math.floor(Date.now() / 1000) + 3600
const tokenFor = (sub: string): string => jwt({ alg: 'HS256', typ: 'JWT' }, { sub, exp: inAnHour() })

/** Opens /heart/current; rejects with Refused when the server answers the handshake with a status. */
async function connect (headers: Record<string, string>, query = ''): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/heart/current${query}`, { headers, handshakeTimeout: TIMEOUT_MS })
  ws.on('error', () => {})
  return await new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
    ws.once('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => {
        req.destroy()
        reject(new Refused(res.statusCode ?? 0, body, res.headers))
      })
    })
  })
}

const openSockets = new Set<WebSocket>()
t.teardown(() => { for (const ws of openSockets) ws.terminate() })

async function openAs (userId: string): Promise<Frames> {
  const ws = await connect({ authorization: `Bearer ${tokenFor(userId)}` })
  openSockets.add(ws)
  ws.once('close', () => openSockets.delete(ws))
  return new Frames(ws)
}

/** alice's socket for the frame properties; replaced when a property makes the server close it. */
let probe = await openAs(ME)
let pings = 0

/** The socket still works: a ping is answered by its pong and nothing else is waiting. */
async function answersPing (frames: Frames): Promise<void> {
  const reqId = `after-${++pings}`
  const pong = await frames.ask({ type: 'ping', reqId }, TIMEOUT_MS)
  if (pong.type !== 'pong' || pong.reqId !== reqId) throw new Error(`expected pong ${reqId}, got ${JSON.stringify(pong)}`)
}

/** Sends one frame and returns its answer, after checking nothing else followed and the socket answers a ping. */
async function exchange (data: string | Buffer, binary = false): Promise<string> {
  if (probe.pending > 0) throw new Error(`unexpected frame waiting: ${await probe.next()}`)
  probe.ws.send(data, { binary })
  const answer = await probe.next(TIMEOUT_MS)
  await answersPing(probe)
  return answer
}

function stillRunning (): void {
  if (server.proc.exitCode !== null || server.proc.signalCode !== null) {
    throw new Error(`server exited (${server.proc.exitCode ?? server.proc.signalCode}):\n${server.logs.slice(-20).join('\n')}`)
  }
}

/** Sends a frame the server must refuse by closing the socket; returns the close code and reopens the probe. */
async function closesWith (data: string | Buffer, binary = false): Promise<number> {
  probe.ws.send(data, { binary })
  const timer = setTimeout(() => probe.ws.terminate(), TIMEOUT_MS)
  const code = await probe.closed
  clearTimeout(timer)
  stillRunning()
  probe = await openAs(ME)
  return code
}

// ---------------------------------------------------------------------------------------------
// What a frame must be answered with (the protocol, restated)

type ReqId = string | number
type Expect =
  | { kind: 'legacy', value: string }
  | { kind: 'error', code: string, reqId?: ReqId }
  | { kind: 'pong' | 'current' | 'subscribed', reqId?: ReqId }
  | { kind: 'unsubscribed', userId: string, reqId?: ReqId }

const fail = (code: string, reqId?: ReqId): Expect => reqId === undefined ? { kind: 'error', code } : { kind: 'error', code, reqId }

function expectForText (text: string): Expect {
  // A frame whose first non-blank character is `{` is JSON; anything else is a legacy user id.
  if (text.trimStart().startsWith('{')) return expectForJson(text)
  if (!isUserId(text)) return fail('bad_request')
  return text === ME ? { kind: 'legacy', value: String(MY_BPM) } : fail('forbidden')
}

function expectForJson (text: string): Expect {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return fail('bad_request')
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return fail('bad_request')
  const own = (key: string): unknown => Object.hasOwn(value, key) ? (value as Record<string, unknown>)[key] : undefined
  const rawReqId = own('reqId')
  let reqId: ReqId | undefined
  if (rawReqId !== undefined) {
    const ok = (typeof rawReqId === 'string' && rawReqId.length >= 1 && rawReqId.length <= 64) ||
      (typeof rawReqId === 'number' && Number.isSafeInteger(rawReqId))
    if (!ok) return fail('bad_request')
    reqId = rawReqId as ReqId
  }
  const withReqId = <E extends Expect>(e: E): E => reqId === undefined ? e : { ...e, reqId }
  const type = own('type')
  if (typeof type !== 'string' || !CLIENT_TYPES.includes(type)) return fail('bad_request', reqId)
  if (type === 'ping') return withReqId({ kind: 'pong' })
  if (type === 'refresh') {
    const token = own('token')
    if (typeof token !== 'string' || token.length === 0 || token.length > 8192) return fail('bad_request', reqId)
    return fail('unauthorized', reqId)
  }
  const userId = own('userId')
  if (!isUserId(userId)) return fail('bad_request', reqId)
  if (type === 'subscribe' && own('since') !== undefined && !isHistoryId(own('since'))) return fail('bad_request', reqId)
  if (type === 'unsubscribe') return withReqId({ kind: 'unsubscribed', userId })
  if (userId !== ME) return fail('forbidden', reqId)
  return withReqId({ kind: type === 'get' ? 'current' : 'subscribed' })
}

/** Null when the answer is what was expected, otherwise what is wrong with it. */
function mismatch (answer: string, e: Expect): string | null {
  if (e.kind === 'legacy') return answer === e.value ? null : `expected legacy answer ${e.value}`
  let frame: any
  try {
    frame = JSON.parse(answer)
  } catch {
    return 'answer is not JSON'
  }
  if (frame === null || typeof frame !== 'object') return 'answer is not an object'
  if (e.reqId === undefined ? Object.hasOwn(frame, 'reqId') : frame.reqId !== e.reqId) return `expected reqId ${JSON.stringify(e.reqId)}`
  switch (e.kind) {
    case 'error':
      if (frame.type !== 'error' || frame.code !== e.code) return `expected error ${e.code}`
      return typeof frame.message === 'string' && frame.message.length > 0 ? null : 'error without a message'
    case 'pong':
      return frame.type === 'pong' && Number.isInteger(frame.ts) ? null : 'expected pong'
    case 'current':
      return frame.type === 'current' && frame.userId === ME && frame.bpm === MY_BPM && frame.ts === null ? null : 'expected current'
    case 'subscribed':
      return frame.type === 'subscribed' && frame.userId === ME && frame.current?.bpm === MY_BPM ? null : 'expected subscribed'
    case 'unsubscribed':
      return frame.type === 'unsubscribed' && frame.userId === e.userId ? null : 'expected unsubscribed'
  }
}

function check (sent: string, answer: string, e: Expect): void {
  const wrong = mismatch(answer, e)
  if (wrong !== null) {
    throw new Error(`${wrong}\n  sent:     ${JSON.stringify(sent).slice(0, 300)}\n  expected: ${JSON.stringify(e)}\n  answer:   ${answer.slice(0, 300)}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Generators

const HOSTILE_IDS = [
  '*', '..', '.', 'a:b', 'a{b}', '{a}', '{hx:a}:live', 'a\r\nb', '\r\n', 'alice\n', '\nalice', 'alice\u0000', '', ' ', ' alice',
  'a b', 'a/b', 'a%2Fb', '%2A', 'é', 'ａ', '😀', '\u202e', 'ALICE', 'a'.repeat(65), 'a'.repeat(64),
  '__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', '-', '_', '0', ME
]

/** User ids, hostile and ordinary: the documented rule is 1-64 of A-Z a-z 0-9 _ -. */
const userIdArb = fc.oneof(
  { arbitrary: fc.constantFrom(...HOSTILE_IDS), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 70 }), weight: 1 },
  { arbitrary: fc.string({ unit: fc.constantFrom(...'aZ09_-:{}*. /\r\n\u0000é'), minLength: 0, maxLength: 70 }), weight: 2 }
)

const u64 = fc.bigInt({ min: 0n, max: U64_MAX + 2n })
const sinceArb = fc.oneof(
  fc.tuple(u64, u64).map(([a, b]) => `${a}-${b}`),
  fc.constantFrom('0-0', '1-', '-1', '1-2-3', '18446744073709551616-0', '99999999999999999999-0', ' 1-0', '1-0 ', '0x1-0', '1e3-0'),
  fc.string({ maxLength: 30 }),
  fc.jsonValue({ maxDepth: 2 })
)

const reqIdArb = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 70 }),
  fc.integer(),
  fc.double(),
  fc.constantFrom(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, -0, Infinity, null, true, '', 'x'.repeat(64), 'x'.repeat(65)),
  fc.jsonValue({ maxDepth: 2 })
)

const typeArb = fc.oneof(
  { arbitrary: fc.constantFrom(...CLIENT_TYPES), weight: 4 },
  { arbitrary: fc.constantFrom('GET', 'Ping', 'pong', 'error', 'current', 'reading', '__proto__', 'constructor', ' get', 'get '), weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 1 }), weight: 1 }
)

/** Keys that mean something to JavaScript objects, sent beside (or instead of) the real ones. */
const protoKeysArb = fc.array(fc.tuple(fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty'), fc.jsonValue({ maxDepth: 2 })), { maxLength: 3 })

/** JSON text of an object, keys in the given order (so `__proto__` is a real own key, as a client can send it). */
function objectText (entries: Array<[string, unknown]>): string {
  return '{' + entries.filter(([, v]) => v !== undefined).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',') + '}'
}

const frameObjectArb = fc.tuple(
  fc.record({ type: typeArb, userId: fc.oneof(userIdArb, fc.jsonValue({ maxDepth: 2 })), since: sinceArb, reqId: reqIdArb, token: fc.oneof(fc.string({ maxLength: 40 }), fc.jsonValue({ maxDepth: 1 })) }, { requiredKeys: [] }),
  protoKeysArb,
  fc.boolean(),
  fc.constantFrom('', ' ', '\n\t', '\ufeff', '\u00a0')
).map(([fields, extra, protoFirst, lead]) => {
  const entries = Object.entries(fields) as Array<[string, unknown]>
  return lead + objectText(protoFirst ? [...extra, ...entries] : [...entries, ...extra])
})

const textFrameArb = fc.oneof(
  { arbitrary: frameObjectArb, weight: 5 },
  { arbitrary: userIdArb, weight: 2 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 300 }), weight: 2 },
  { arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 300 }), weight: 1 },
  { arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)), weight: 1 }
).filter((s) => Buffer.byteLength(s) <= MAX_PAYLOAD)

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
function decodeUtf8 (bytes: Uint8Array): string | null {
  try {
    return utf8.decode(bytes)
  } catch {
    return null
  }
}

/** Nested JSON: `depth` arrays or one-key objects around a number. */
function nested (depth: number, objects: boolean): string {
  return objects ? '{"a":'.repeat(depth) + '1' + '}'.repeat(depth) : '['.repeat(depth) + ']'.repeat(depth)
}

// ---------------------------------------------------------------------------------------------
// HTTP

interface HttpAnswer { status: number, headers: Record<string, string | string[] | undefined>, body: string }

/** A request with the path exactly as given (fetch would normalise `..`), on a connection of its own. */
async function http (method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<HttpAnswer> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: server.port, path, method, headers, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`${method} ${path.slice(0, 80)}: no answer within ${TIMEOUT_MS} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

/** A 4xx answer is JSON with the status and a message. */
function errorJson (res: { status: number, body: string }, status: number, context: string): { message: string } {
  let body: any
  try {
    body = JSON.parse(res.body)
  } catch {
    throw new Error(`${context}: ${res.status} answer is not JSON: ${res.body.slice(0, 200)}`)
  }
  if (res.status !== status || body?.statusCode !== status || typeof body.message !== 'string' || body.message.length === 0) {
    throw new Error(`${context}: expected ${status} JSON with a message, got ${res.status} ${res.body.slice(0, 300)}`)
  }
  return body
}

/** What each user was acknowledged, in order: history must hold exactly this at the end. */
const acknowledged = new Map<string, Array<{ bpm: number, ts?: number }>>()

async function ingest (userId: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  const res = await fetch(`${server.url}/heart/${encodeURIComponent(userId)}/readings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY, ...headers },
    body,
    signal: AbortSignal.timeout(TIMEOUT_MS)
  })
  return { status: res.status, body: await res.text() }
}

/** Records what a 202 stored: a reading whose own `ts` the user already has (a resend) is a duplicate, stored once. */
function remember (userId: string, readings: Array<{ bpm: number, ts?: number }>, answer: string): void {
  const parsed = JSON.parse(answer)
  const list = acknowledged.get(userId) ?? []
  const seen = new Set(list.map((r) => r.ts))
  const fresh = readings.filter((r) => {
    if (r.ts === undefined) return true
    if (seen.has(r.ts)) return false
    seen.add(r.ts)
    return true
  })
  if (parsed.accepted !== fresh.length || parsed.duplicates !== readings.length - fresh.length ||
    parsed.ids.length !== readings.length || !parsed.ids.every((id: unknown) => isHistoryId(id))) {
    throw new Error(`202 answer does not account for ${readings.length} readings (${fresh.length} new): ${answer.slice(0, 200)}`)
  }
  list.push(...fresh)
  acknowledged.set(userId, list)
}

type Reading = { bpm: number, ts?: number }

/** The readings a body carries when it is valid per the documented schema, or null when it must be refused with 400. */
function validReadings (body: unknown, now: number): Reading[] | null {
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
  const okBpm = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= BPM_MIN && (v as number) <= BPM_MAX
  const okTs = (v: unknown): boolean => v === undefined || (Number.isInteger(v) && (v as number) >= TS_MIN && (v as number) <= now + FUTURE_TOLERANCE_MS)
  const onlyKeys = (o: Record<string, unknown>, keys: string[]): boolean => Object.keys(o).every((k) => keys.includes(k))
  if (!isObject(body) || !onlyKeys(body, ['bpm', 'ts', 'readings'])) return null
  if ((body.bpm === undefined) === (body.readings === undefined)) return null
  if (body.bpm !== undefined) {
    return okBpm(body.bpm) && okTs(body.ts) ? [body.ts === undefined ? { bpm: body.bpm as number } : { bpm: body.bpm as number, ts: body.ts as number }] : null
  }
  const list = body.readings
  if (body.ts !== undefined || !Array.isArray(list) || list.length === 0 || list.length > BATCH_MAX) return null
  const out: Reading[] = []
  for (const r of list) {
    if (!isObject(r) || !onlyKeys(r, ['bpm', 'ts']) || !okBpm(r.bpm) || !okTs(r.ts)) return null
    out.push(r.ts === undefined ? { bpm: r.bpm as number } : { bpm: r.bpm as number, ts: r.ts as number })
  }
  return out
}

const NOW = Date.now()
const bpmArb = fc.oneof(
  { arbitrary: fc.integer({ min: BPM_MIN, max: BPM_MAX }), weight: 6 },
  { arbitrary: fc.integer({ min: -1_000_000, max: 1_000_000 }), weight: 1 },
  { arbitrary: fc.double(), weight: 1 },
  { arbitrary: fc.constantFrom('72', 'NaN', 'Infinity', '-Infinity', '1e400', '', null, true, [], {}, [72], { bpm: 72 }, 0, -0, 19, 20, 250, 251, 72.5, 1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, Number.MIN_VALUE), weight: 2 }
)
const tsArb = fc.oneof(
  { arbitrary: fc.constant(undefined), weight: 4 },
  { arbitrary: fc.integer({ min: TS_MIN, max: NOW }), weight: 4 },
  { arbitrary: fc.constantFrom(0, -1, NOW / 1000, Math.floor(NOW / 1000), NOW + 0.5, NOW + 10 * 60_000, 1e20, Infinity, -Infinity, TS_MIN - 1, String(NOW), 'now', null, [], {}), weight: 2 },
  { arbitrary: fc.double(), weight: 1 }
)
/** A reading object, sometimes with an unknown key or keys that mean something to JavaScript (as own keys, as a client can send them). */
const readingArb = fc.tuple(
  fc.record({ bpm: bpmArb, ts: tsArb }, { requiredKeys: [] }),
  fc.option(protoKeysArb, { freq: 6 }),
  fc.option(fc.tuple(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 })), { freq: 8 })
).map(([fields, proto, extra]) => {
  const entries: Array<[string, unknown]> = Object.entries(fields)
  if (extra !== null) entries.push(extra)
  if (proto !== null) entries.push(...proto)
  return Object.fromEntries(entries)
})

/** Ingest bodies as text: valid ones, near misses, batches around the limit, and random JSON or bytes. */
const ingestBodyArb: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: readingArb.map((r) => JSON.stringify(r)), weight: 6 },
  {
    arbitrary: fc.tuple(
      fc.oneof(fc.array(readingArb, { minLength: 0, maxLength: 6 }), fc.constantFrom(BATCH_MAX, BATCH_MAX + 1).chain((n) => fc.array(fc.integer({ min: BPM_MIN, max: BPM_MAX }).map((bpm) => ({ bpm })), { minLength: n, maxLength: n }))),
      fc.option(tsArb, { freq: 5 }),
      fc.option(bpmArb, { freq: 6 })
    ).map(([readings, ts, bpm]) => JSON.stringify({ readings, ...(ts === null ? {} : { ts }), ...(bpm === null ? {} : { bpm }) })),
    weight: 3
  },
  { arbitrary: protoKeysArb.map((keys) => objectText([['bpm', 72], ...keys])), weight: 1 },
  { arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)), weight: 2 },
  { arbitrary: fc.constantFrom('{"bpm":1e400}', '{"bpm":NaN}', '{"bpm":Infinity}', '{"bpm":72,}', '{"bpm":0x48}', '{"bpm":072}', '{"bpm":72', '', ' ', 'null', '[]', '"72"', '72', '{"bpm":300,"bpm":72}', '{"bpm":7.2e1}', '{"bpm":72.0}', '{"bpm":"\\u0037\\u0032"}'), weight: 1 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 200 }), weight: 1 }
)

const INGEST_USERS = ['bob', 'carol', '__proto__', 'constructor', 'prototype', 'a'.repeat(64), '-', '_', '0']

// ---------------------------------------------------------------------------------------------
// Frames

t.test('random text frames each get their documented answer and the socket stays open', async (t) => {
  await fc.assert(fc.asyncProperty(textFrameArb, async (text) => {
    check(text, await exchange(text), expectForText(text))
  }), { seed: SEED, numRuns: 500 })
  t.pass('500 frames answered as the protocol says')
})

t.test('hostile user ids in legacy, get and subscribe frames', async (t) => {
  for (const id of [...HOSTILE_IDS, 'a'.repeat(1000)]) {
    for (const text of [id, JSON.stringify({ type: 'get', userId: id, reqId: 1 }), JSON.stringify({ type: 'subscribe', userId: id, reqId: 'r' })]) {
      check(text, await exchange(text), expectForText(text))
    }
  }
  t.pass(`${HOSTILE_IDS.length + 1} ids, three ways each`)
  t.match(JSON.parse(await exchange('*')), { type: 'error', code: 'bad_request', message: /user id/ }, 'a legacy `*` is a bad request, not a pattern')
  t.match(JSON.parse(await exchange('{"type":"get","userId":"a:b","reqId":7}')), { type: 'error', code: 'bad_request', reqId: 7 })
  t.match(JSON.parse(await exchange('{"type":"get","userId":"__proto__","reqId":8}')), { type: 'error', code: 'forbidden', reqId: 8 }, '`__proto__` is a user id like any other')
})

t.test('random binary frames are refused with bad_request', async (t) => {
  await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: MAX_PAYLOAD }), async (bytes) => {
    check('<binary>', await exchange(Buffer.from(bytes), true), fail('bad_request'))
  }), { seed: SEED, numRuns: 200 })
  t.pass('200 binary frames refused')
})

t.test('random bytes in text frames: valid UTF-8 is answered, invalid UTF-8 closes with 1007', async (t) => {
  let invalid = 0
  const bytesArb = fc.oneof(
    fc.uint8Array({ maxLength: 200 }),
    fc.tuple(textFrameArb, fc.nat(), fc.integer({ min: 0x80, max: 0xff })).map(([s, at, byte]) => {
      const buf = Buffer.from(s)
      if (buf.length > 0) buf[at % buf.length] = byte
      return new Uint8Array(buf)
    })
  ).filter((b) => b.length <= MAX_PAYLOAD)
  await fc.assert(fc.asyncProperty(bytesArb, async (bytes) => {
    const text = decodeUtf8(bytes)
    if (text === null) {
      invalid++
      const code = await closesWith(Buffer.from(bytes), false)
      if (code !== 1007) throw new Error(`invalid UTF-8 closed with ${code}, expected 1007`)
      return
    }
    check(text, await exchange(Buffer.from(bytes), false), expectForText(text))
  }), { seed: SEED, numRuns: 200 })
  t.ok(invalid > 20, `invalid UTF-8 was tried (${invalid} of 200)`)
})

t.test('nested JSON within MAX_PAYLOAD_BYTES is parsed and answered', async (t) => {
  const arb = fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 2100 }), fc.constantFrom('ping', 'get', 'subscribe'), fc.constantFrom('x', 'userId', 'reqId', 'since'))
    .map(([objects, depth, type, field]) => objectText([['type', type], ['userId', ME], ['reqId', 'n']]).slice(0, -1) + `,"${field}":${nested(depth, objects)}}`)
    .filter((s) => Buffer.byteLength(s) <= MAX_PAYLOAD)
  await fc.assert(fc.asyncProperty(arb, async (text) => {
    check(text.slice(0, 80), await exchange(text), expectForText(text))
  }), { seed: SEED, numRuns: 150 })
  const exact = `{"type":"ping","reqId":"edge","x":${nested((MAX_PAYLOAD - 36) / 2, false)}} `
  t.equal(Buffer.byteLength(exact), MAX_PAYLOAD)
  check(exact.slice(0, 80), await exchange(exact), { kind: 'pong', reqId: 'edge' })
  t.pass('a frame of exactly MAX_PAYLOAD_BYTES is answered')
})

t.test('frames over MAX_PAYLOAD_BYTES close the socket with 1009', async (t) => {
  const arb = fc.oneof(
    fc.integer({ min: MAX_PAYLOAD + 1, max: 12_000 }).map((n) => ({ data: 'x'.repeat(n), binary: false })),
    fc.integer({ min: 2100, max: 10_000 }).map((d) => ({ data: `{"type":"ping","x":${nested(d, false)}}`, binary: false })),
    fc.integer({ min: 700, max: 10_000 }).map((d) => ({ data: `{"type":"ping","x":${nested(d, true)}}`, binary: false })),
    fc.constant({ data: 'a'.repeat(10_000), binary: false }),
    fc.constant({ data: JSON.stringify({ type: 'get', userId: 'a'.repeat(10_000) }), binary: false }),
    fc.constant({ data: '😀'.repeat(MAX_PAYLOAD / 4 + 1), binary: false }),
    fc.integer({ min: MAX_PAYLOAD + 1, max: 10_000 }).map((n) => ({ data: Buffer.alloc(n, 7), binary: true }))
  ).filter(({ data }) => Buffer.byteLength(data) > MAX_PAYLOAD)
  await fc.assert(fc.asyncProperty(arb, async ({ data, binary }) => {
    const code = await closesWith(data, binary)
    if (code !== 1009) throw new Error(`a ${Buffer.byteLength(data)}-byte frame closed with ${code}, expected 1009`)
  }), { seed: SEED, numRuns: 40 })
  t.pass('40 oversize frames closed with 1009')
  await answersPing(probe)
})

t.test('ids like __proto__ and constructor are ordinary users end to end', async (t) => {
  for (const userId of ['__proto__', 'constructor', 'prototype', 'hasOwnProperty']) {
    const frames = await openAs(userId)
    t.match(await frames.ask({ type: 'subscribe', userId, reqId: 1 }), { type: 'subscribed', userId, current: null, reqId: 1 })
    const res = await ingest(userId, JSON.stringify({ bpm: 99 }))
    t.equal(res.status, 202, `${userId}: reading accepted`)
    remember(userId, [{ bpm: 99 }], res.body)
    t.match(await frames.json(TIMEOUT_MS), { type: 'reading', userId, bpm: 99 }, `${userId}: pushed to its subscriber`)
    frames.ws.send(userId)
    t.equal(await frames.next(), '99', `${userId}: the legacy frame answers it`)
    const hist = await fetch(`${server.url}/heart/${userId}/readings`, { headers: { authorization: `Bearer ${tokenFor(userId)}` }, signal: AbortSignal.timeout(TIMEOUT_MS) })
    t.match(await hist.json(), { userId, readings: [{ bpm: 99 }] }, `${userId}: history holds it`)
    frames.ws.close()
    await frames.closed
  }
})

// ---------------------------------------------------------------------------------------------
// Handshakes

const validToken = tokenFor('authprobe')
const [validHead, validBody, validSig] = validToken.split('.')
const b64Chars = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/='.split(''))
const headerChars = fc.constantFrom(...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)), '\t')

/**
 * Spellings of a token's signature that decode to the same bytes under a lenient base64 decoder,
 * although only the canonical base64url spelling is a JWS signature (RFC 7515 section 2).
 */
function signatureRespellings (tok: string): string[] {
  const [head, body, sig] = tok.split('.')
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  // 32 bytes take 43 characters: the last one carries 4 bits and 2 unused ones.
  const last = alphabet.indexOf(sig[sig.length - 1])
  const variants = [
    `${sig}=`, `${sig}==`, `${sig}!`, ` ${sig}`, `${sig.slice(0, 10)}*${sig.slice(10)}`,
    ...[1, 2, 3].map((bits) => sig.slice(0, -1) + alphabet[last ^ bits]),
    sig.replace(/-/g, '+').replace(/_/g, '/'),
    Buffer.from(sig, 'base64url').toString('base64')
  ]
  return [...new Set(variants)].filter((v) => v !== sig).map((v) => `${head}.${body}.${v}`)
}

/** Tokens that must be refused, whatever their shape. */
const badTokenArb = fc.oneof(
  fc.constant(jwt({ alg: 'none', typ: 'JWT' }, { sub: 'authprobe', exp: inAnHour() }, null)),
  fc.constant(jwt({ alg: 'none' }, { sub: 'authprobe', exp: inAnHour() }, null) + 'x'),
  fc.constant(jwt({ alg: 'NONE' }, { sub: 'authprobe', exp: inAnHour() })),
  // Algorithm confusion: an RS256 (or ES256) header over an HMAC signature.
  fc.constantFrom('RS256', 'ES256', 'PS256', 'HS384', 'HS512', 'hs256').map((alg) => jwt({ alg, typ: 'JWT' }, { sub: 'authprobe', exp: inAnHour() })),
  fc.string({ minLength: 1, maxLength: 40 }).map((secret) => jwt({ alg: 'HS256' }, { sub: 'authprobe', exp: inAnHour() }, secret)),
  // Properly signed, unacceptable claims.
  fc.constantFrom<object>(
    { exp: inAnHour() }, { sub: 'authprobe' }, { sub: 'authprobe', exp: 1 }, { sub: 'authprobe', exp: 'never' },
    { sub: 42, exp: inAnHour() }, { sub: ['authprobe'], exp: inAnHour() }, { sub: 'authprobe', exp: inAnHour(), nbf: inAnHour() },
    ...HOSTILE_IDS.filter((id) => !USER_ID.test(id)).map((sub) => ({ sub, exp: inAnHour() }))
  ).map((claims) => jwt({ alg: 'HS256', typ: 'JWT' }, claims)),
  // Wrong segment counts, tampering, and bytes that are not base64url.
  fc.constantFrom(validHead, `${validHead}.${validBody}`, `${validHead}.${validBody}.`, `${validToken}.`, `${validToken}.${validSig}`, `.${validBody}.${validSig}`, '..', '...', '.', `${validHead}..${validSig}`),
  fc.tuple(fc.nat(), b64Chars).map(([at, c]) => {
    const i = at % validToken.length
    return validToken.slice(0, i) + (validToken[i] === c ? (c === 'A' ? 'B' : 'A') : c) + validToken.slice(i + 1)
  }).filter((tok) => tok !== validToken),
  fc.array(fc.string({ unit: b64Chars, maxLength: 60 }), { minLength: 1, maxLength: 5 }).map((parts) => parts.join('.')),
  // The same signature bytes spelt otherwise: padding, the other base64 alphabet, other unused low bits, stray characters.
  fc.constantFrom(...signatureRespellings(validToken)),
  fc.constantFrom(`${validHead}=.${validBody}.${validSig}`, `${b64url('{"alg":"HS256"')}.${validBody}.${validSig}`, `${b64url('not json')}.${validBody}.${validSig}`, `${validHead}.${b64url('[]')}.${validSig}`, `${validHead}.${b64url('null')}.${validSig}`),
  // Huge, but under Node's 16 KiB header limit.
  fc.integer({ min: 8000, max: 15_000 }).map((n) => `${validHead}.${'A'.repeat(n)}.${validSig}`)
)

/** Authorization headers that must be refused: bad tokens under Bearer, and malformed headers around good ones. */
const badAuthorizationArb = fc.oneof(
  { arbitrary: badTokenArb.map((tok) => `Bearer ${tok}`), weight: 6 },
  { arbitrary: fc.constantFrom('Bearer', 'Bearer ', 'Bearer  ', `Bearer ${validToken} x`, `Bearer ${validToken} ${validToken}`, `Bearer\t${validToken}`, `Bearer,${validToken}`, `Bearer:${validToken}`, `Bearer=${validToken}`, `Basic ${validToken}`, `Token ${validToken}`, validToken, `Bearer${validToken}`, `Bearer "${validToken}"`, `Bearer ${validToken},Bearer ${validToken}`, `Basic ${b64url('authprobe:x')}`), weight: 2 },
  { arbitrary: fc.string({ unit: headerChars, maxLength: 200 }), weight: 2 }
).filter((h) => !/^bearer +\S+$/i.test(h.trim()) || !h.trim().endsWith(` ${validToken}`))

function refusedProperly (err: unknown, context: string): void {
  if (!(err instanceof Refused)) throw new Error(`${context}: expected a 401 answer before the upgrade, got ${err instanceof Error ? err.message : 'an open socket'}`)
  errorJson(err, 401, context)
  if (err.headers['www-authenticate'] !== 'Bearer') throw new Error(`${context}: 401 without WWW-Authenticate: Bearer`)
}

t.test('malformed Authorization headers and tokens are refused with 401 JSON before the upgrade', async (t) => {
  await fc.assert(fc.asyncProperty(badAuthorizationArb, async (authorization) => {
    const context = `Authorization: ${JSON.stringify(authorization).slice(0, 120)}`
    const ws = await connect({ authorization }).catch((err: unknown) => err)
    if (ws instanceof WebSocket) ws.terminate()
    refusedProperly(ws, context)
    const res = await http('GET', `/heart/${ME}/readings`, { authorization })
    errorJson(res, 401, `${context} on history`)
  }), { seed: SEED, numRuns: 300 })
  t.pass('300 handshakes refused, and the same headers on history')
})

t.test('bad tokens in ?access_token= are refused with 401 JSON before the upgrade', async (t) => {
  await fc.assert(fc.asyncProperty(badTokenArb.filter((tok) => tok.length < 12_000), async (tok) => {
    const ws = await connect({}, `?access_token=${encodeURIComponent(tok)}`).catch((err: unknown) => err)
    if (ws instanceof WebSocket) ws.terminate()
    refusedProperly(ws, `?access_token=${tok.slice(0, 80)}`)
  }), { seed: SEED, numRuns: 150 })
  t.pass('150 query tokens refused')
})

t.test('the valid token is accepted in every spelling the Bearer scheme allows', async (t) => {
  for (const authorization of [`Bearer ${validToken}`, `bearer ${validToken}`, `BEARER   ${validToken}`, `  Bearer ${validToken}  `]) {
    const ws = await connect({ authorization })
    const frames = new Frames(ws)
    t.match(await frames.ask({ type: 'ping', reqId: 1 }), { type: 'pong', reqId: 1 }, JSON.stringify(authorization.replace(validToken, '<jwt>')))
    ws.close()
    await frames.closed
  }
})

t.test('headers over the server limit get 431 and leave the server up', async (t) => {
  const res = await http('GET', '/heart/current', { authorization: `Bearer ${validHead}.${'A'.repeat(20_000)}.${validSig}`, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' })
  t.equal(res.status, 431, 'Node refuses a header section over 16 KiB (Request Header Fields Too Large)')
  stillRunning()
})

// ---------------------------------------------------------------------------------------------
// Ingest

t.test('random ingest bodies get 202 or a 400 naming the body', async (t) => {
  let accepted = 0
  await fc.assert(fc.asyncProperty(fc.constantFrom(...INGEST_USERS), ingestBodyArb, async (userId, body) => {
    let parsed: unknown
    let syntaxOk = true
    try {
      parsed = JSON.parse(body)
    } catch {
      syntaxOk = false
    }
    const expected = syntaxOk ? validReadings(parsed, Date.now()) : null
    const res = await ingest(userId, body)
    const context = `POST ${userId} ${body.slice(0, 200)}`
    if (expected === null) {
      const { message } = errorJson(res, 400, context)
      if (!/^body/i.test(message)) throw new Error(`${context}: the 400 message does not name the body: ${message}`)
      return
    }
    if (res.status !== 202) throw new Error(`${context}: expected 202, got ${res.status} ${res.body.slice(0, 200)}`)
    accepted += expected.length
    remember(userId, expected, res.body)
  }), { seed: SEED, numRuns: 400 })
  t.ok(accepted > 100, `valid readings were among them (${accepted} accepted)`)
})

t.test('NaN-like, out-of-range and mistyped readings are each refused with 400', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['{"bpm":"NaN"}', /body\/bpm must be integer/],
    ['{"bpm":"Infinity"}', /body\/bpm must be integer/],
    ['{"bpm":"1e400"}', /body\/bpm must be integer/],
    ['{"bpm":1e400}', /body\/bpm/],
    ['{"bpm":"72"}', /body\/bpm must be integer/],
    ['{"bpm":72.5}', /body\/bpm must be integer/],
    ['{"bpm":-72}', /body\/bpm must be >= 20/],
    ['{"bpm":19}', /body\/bpm must be >= 20/],
    ['{"bpm":251}', /body\/bpm must be <= 250/],
    ['{"bpm":null}', /body\/bpm must be integer/],
    ['{"bpm":72,"ts":1764115200}', /body\/ts must be >= /],
    ['{"bpm":72,"ts":-1}', /body\/ts/],
    ['{"bpm":72,"ts":1764115200000.5}', /body\/ts must be integer/],
    [`{"bpm":72,"ts":${NOW + 10 * 60_000}}`, /body\/ts is more than 60 s in the future/],
    ['[{"bpm":72}]', /body must be object/],
    ['null', /body must be object/],
    ['{}', /body must have bpm/],
    ['{"bpm":72,"readings":[{"bpm":72}]}', /not both/],
    ['{"readings":[]}', /body\/readings must NOT have fewer than 1 items/],
    [JSON.stringify({ readings: Array(501).fill({ bpm: 72 }) }), /body\/readings must NOT have more than 500 items/],
    ['{"readings":[{"bpm":72},{"bpm":"72"}]}', /body\/readings\/1\/bpm must be integer/],
    ['{"readings":[{"bpm":72}],"ts":1764115200000}', /body\/ts belongs inside each reading/],
    ['{"bpm":72,"extra":1}', /body\/extra is not an accepted property/],
    ['{"bpm":72,"__proto__":{"admin":true}}', /^Body is not valid JSON/],
    ['{"bpm":72,"constructor":{"prototype":{"admin":true}}}', /^Body is not valid JSON/],
    ['{"bpm":72,"prototype":1}', /body\/prototype is not an accepted property/]
  ]
  for (const [body, message] of cases) {
    const res = await ingest('bob', body)
    t.match(errorJson(res, 400, body), { message }, body.slice(0, 80))
  }
  const five = await ingest('bob', JSON.stringify({ readings: Array.from({ length: BATCH_MAX }, (_, i) => ({ bpm: BPM_MIN + (i % 200) })) }))
  t.equal(five.status, 202, 'a batch of exactly 500 is accepted')
  remember('bob', Array.from({ length: BATCH_MAX }, (_, i) => ({ bpm: BPM_MIN + (i % 200) })), five.body)
})

t.test('hostile user ids in the ingest path are refused', async (t) => {
  const idArb = fc.oneof(userIdArb, fc.string({ unit: 'binary', minLength: 90, maxLength: 200 }), fc.constant('a'.repeat(10_000)))
    .filter((id) => id !== ME && !id.split('').some((c) => c >= '\ud800' && c <= '\udfff'))
  await fc.assert(fc.asyncProperty(idArb, fc.boolean(), async (id, raw) => {
    // Raw: the characters as typed, where the HTTP client allows them; otherwise percent-encoded.
    const segment = raw && /^[\x21-\x7e]*$/.test(id) && !id.includes('/') && !id.includes('?') && !id.includes('#') && !id.includes('%') ? id : encodeURIComponent(id)
    const res = await http('POST', `/heart/${segment}/readings`, { 'content-type': 'application/json', 'x-api-key': KEY }, '{"bpm":80}')
    const context = `POST /heart/${segment.slice(0, 100)}/readings`
    if (isUserId(id)) {
      if (res.status !== 202) throw new Error(`${context}: expected 202, got ${res.status} ${res.body.slice(0, 200)}`)
      remember(id, [{ bpm: 80 }], res.body)
    } else if (segment.length > MAX_PARAM_LENGTH) {
      errorJson(res, 414, context)
    } else {
      errorJson(res, 400, context)
    }
  }), { seed: SEED, numRuns: 200 })
  t.pass('200 paths answered')
  for (const [segment, status] of [['..', 400], ['.', 400], ['*', 400], ['a:b', 400], ['a%7Bb%7D', 400], ['a%0D%0Ab', 400], ['%2E%2E', 400], ['%ZZ', 400], ['', 400], ['a'.repeat(10_000), 414]] as const) {
    const res = await http('POST', `/heart/${segment}/readings`, { 'content-type': 'application/json', 'x-api-key': KEY }, '{"bpm":80}')
    errorJson(res, status, segment.slice(0, 40))
  }
  t.pass('.., *, a:b, braces, CR/LF, empty and 10 000 characters refused')
})

t.test('ingest without a known key is 401; unsupported or oversize bodies are 415 and 413', async (t) => {
  const keyArb = fc.oneof(fc.constant(null), fc.string({ unit: headerChars, maxLength: 80 }), fc.constantFrom(KEY.toUpperCase(), `${KEY}x`, KEY.slice(0, -1), `${KEY},${KEY}`, 'Bearer ' + KEY))
    .filter((k) => k === null || k.trim() !== KEY)
  await fc.assert(fc.asyncProperty(keyArb, async (key) => {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (key !== null) headers['x-api-key'] = key
    const res = await http('POST', '/heart/bob/readings', headers, '{"bpm":80}')
    errorJson(res, 401, `x-api-key ${JSON.stringify(key)}`)
  }), { seed: SEED, numRuns: 100 })
  for (const type of ['application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonx', 'application/xml', 'image/png']) {
    errorJson(await http('POST', '/heart/bob/readings', { 'content-type': type, 'x-api-key': KEY }, '{"bpm":80}'), 415, type)
  }
  errorJson(await http('POST', '/heart/bob/readings', { 'x-api-key': KEY }, '{"bpm":80}'), 415, 'no content-type')
  // Fastify parses text/plain itself: the body is then a string, which the schema refuses.
  t.match(errorJson(await http('POST', '/heart/bob/readings', { 'content-type': 'text/plain', 'x-api-key': KEY }, '{"bpm":80}'), 400, 'text/plain'), { message: 'body must be object' })
  const big = JSON.stringify({ readings: Array.from({ length: 3000 }, () => ({ bpm: 80, ts: NOW })) })
  errorJson(await http('POST', '/heart/bob/readings', { 'content-type': 'application/json', 'x-api-key': KEY }, big), 413, 'a 100 KB body')
  const deep = `{"bpm":80,"x":${nested(30_000, false)}}`
  t.match(errorJson(await http('POST', '/heart/bob/readings', { 'content-type': 'application/json', 'x-api-key': KEY }, deep), 400, 'deeply nested'), { message: /body\/x is not an accepted property/ })
  errorJson(await http('GET', '/heart/bob/readingz', { authorization: `Bearer ${tokenFor('bob')}` }), 404, 'unknown route')
  errorJson(await http('DELETE', '/heart/bob/readings', { 'x-api-key': KEY }), 404, 'unknown method')
  t.pass('each answered with its JSON error')
})

t.test('hostile ids in shares are refused; a real share is stored', async (t) => {
  const auth = { authorization: `Bearer ${tokenFor('bob')}` }
  for (const id of ['*', '..', 'a:b', 'a%7Bb%7D', 'a%0D%0Ab', '%C3%A9', 'a'.repeat(65)]) {
    errorJson(await http('PUT', `/shares/${id}`, auth), 400, `PUT /shares/${id}`)
  }
  const res = await http('PUT', '/shares/carol', auth)
  t.equal(res.status, 200, 'bob shares with carol')
})

// ---------------------------------------------------------------------------------------------
// Afterwards

t.test('the process is still up, healthy, and logged nothing uncaught', async (t) => {
  stillRunning()
  const health = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  t.equal(health.status, 200, '/health is 200')
  await answersPing(probe)
  const bad = server.logs.filter((line) => /uncaught|unhandled/i.test(line) || /"level":(50|60)/.test(line))
  t.same(bad, [], 'no uncaught, unhandled or error-level log lines')
})

t.test('Redis holds only keys of the documented layout, with exactly the acknowledged readings', async (t) => {
  const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const legacyKey = new RegExp(`^${esc(PREFIX)}([A-Za-z0-9_-]{1,64})$`)
  const derivedKey = new RegExp(`^\\{${esc(PREFIX)}([A-Za-z0-9_-]{1,64})\\}:(ts|history|ids-by-ts|live|viewers|watching)$`)
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await db.scan(cursor, 'COUNT', 1000)
    keys.push(...batch)
    cursor = next
  } while (cursor !== '0')
  const strays = keys.filter((k) => !legacyKey.test(k) && !derivedKey.test(k))
  t.same(strays, [], `every one of ${keys.length} keys is of the documented layout`)

  const problems: string[] = []
  const histories = new Map<string, Array<{ id: string, bpm: number, ts: number }>>()
  const idsByTs = new Map<string, Record<string, string>>()
  for (const key of keys) {
    const type = await db.type(key)
    const legacy = legacyKey.exec(key)
    if (legacy !== null) {
      const value = await db.get(key)
      if (type !== 'string' || value === null || !/^\d+$/.test(value) || Number(value) < BPM_MIN || Number(value) > BPM_MAX) problems.push(`${key} = ${value} (${type})`)
      continue
    }
    const [, userId, kind] = derivedKey.exec(key) as RegExpExecArray
    if (kind === 'ts') {
      const value = await db.get(key)
      const m = /^(\d+):(\d+)$/.exec(value ?? '')
      if (type !== 'string' || m === null || Number(m[2]) < BPM_MIN || Number(m[2]) > BPM_MAX) problems.push(`${key} = ${value} (${type})`)
    } else if (kind === 'history') {
      if (type !== 'stream') { problems.push(`${key} is a ${type}`); continue }
      const entries = await db.xrange(key, '-', '+')
      const list: Array<{ id: string, bpm: number, ts: number }> = []
      for (const [id, fields] of entries) {
        const f = Object.fromEntries(fields.reduce<string[][]>((acc, v, i) => i % 2 === 0 ? [...acc, [v]] : (acc[acc.length - 1].push(v), acc), []))
        const ok = Object.keys(f).length === 2 && /^\d+$/.test(f.bpm) && /^\d+$/.test(f.ts) && Number(f.bpm) >= BPM_MIN && Number(f.bpm) <= BPM_MAX
        if (!ok) problems.push(`${key} ${id} = ${JSON.stringify(fields)}`)
        list.push({ id, bpm: Number(f.bpm), ts: Number(f.ts) })
      }
      histories.set(userId, list)
    } else if (kind === 'ids-by-ts') {
      if (type !== 'hash') { problems.push(`${key} is a ${type}`); continue }
      idsByTs.set(userId, await db.hgetall(key))
    } else if (kind === 'viewers' || kind === 'watching') {
      const members = type === 'set' ? await db.smembers(key) : []
      if (type !== 'set' || !members.every(isUserId)) problems.push(`${key}: ${type} ${JSON.stringify(members)}`)
    } else {
      problems.push(`${key}: a live channel should never exist as a key (${type})`)
    }
  }
  t.same(problems, [], 'every value is well formed')

  const users = [...new Set([...acknowledged.keys(), ...histories.keys()])].sort()
  t.ok(histories.size >= 5, `readings were stored for ${histories.size} users`)
  for (const userId of users) {
    const stored = histories.get(userId) ?? []
    const acked = acknowledged.get(userId) ?? []
    const same = stored.length === acked.length && acked.every((r, i) => r.bpm === stored[i].bpm && (r.ts === undefined || r.ts === stored[i].ts))
    t.ok(same, `${userId}: history holds exactly the ${acked.length} acknowledged readings (it holds ${stored.length})`)
    const byTs = idsByTs.get(userId) ?? {}
    const owned = acked.flatMap((r, i) => r.ts === undefined || stored[i] === undefined ? [] : [[String(r.ts), stored[i].id]])
    t.same(byTs, Object.fromEntries(owned), `${userId}: the duplicate check maps exactly the readings sent with their own ts to their ids`)
  }
  t.ok(keys.includes(`{${PREFIX}bob}:viewers`) && keys.includes(`{${PREFIX}carol}:watching`), 'the share is stored under the documented names')
})
