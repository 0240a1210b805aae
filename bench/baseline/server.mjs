/**
 * The floor the service is measured against: the same work as heart-gateway with only `ws`,
 * `ioredis` and `fast-jwt`, written plainly. Same Redis layout, same frames, and the service's own
 * ingest script, imported from its compiled output (dist/src/heart/redis-scripts.js: run
 * `npm run build` first), with the same keys and arguments: the duplicate check (ids-by-ts), the
 * alert episode state, the exact history trim — so Redis does the same work for both and the
 * ratios compare the servers. bench/load.mjs treats both alike. Not a product: no replay, no
 * sharing API (only the grant check a subscribe makes), no rate limits, no graceful drain — those are costs the service chooses to pay, and the
 * ratios show what they cost.
 *
 * - WebSocket `/heart/current`: HS256 JWT from `Authorization: Bearer` checked on upgrade (401 otherwise).
 *   A text frame that is a user id (self only) answers `GET <prefix><userId>` or `0`;
 *   `{"type":"subscribe","userId":…}` (self, or a user whose `viewers` set holds the caller: one
 *   SISMEMBER, as ours checks a grant) pushes `{"type":"reading",…}` frames, one Redis
 *   subscription per watched user on this instance, reference-counted (alert messages on the
 *   channel are ignored: the floor has no alert frames).
 * - `POST /heart/:userId/readings` with `x-api-key`: `{bpm, ts?}` or `{readings: [...]}` through the
 *   ingest script (a reading without `ts` gets server time and no duplicate check, as in ours),
 *   answered 202 `{accepted, duplicates, ids}`; when the script says the user has the offline
 *   rule on, the ZADD that puts the user on the offline sweep, as ours does.
 * - `GET /health`: 200 once Redis answers.
 *
 * Env: PORT, HOST (127.0.0.1), REDIS_URL, JWT_SECRET, HEART_KEY_PREFIX (heart:), INGEST_API_KEYS,
 * HISTORY_MAX (10000), MAX_PAYLOAD_BYTES (4096), PING_INTERVAL_MS (25000).
 */
import http from 'node:http'
import { Redis } from 'ioredis'
import { WebSocketServer } from 'ws'
import { createVerifier } from 'fast-jwt'
// The service's own ingest script and key layout, from its compiled output: one source of truth,
// so Redis does the same work for both servers (duplicate check, episode state, trimming).
import { INGEST_LUA } from '../../dist/src/heart/redis-scripts.js'
import { userKeys } from '../../dist/src/heart/redis-keys.js'
import { EPISODES_MAX } from '../../dist/src/heart/episodes.js'

const env = process.env
const PORT = Number(env.PORT ?? 3100)
const HOST = env.HOST ?? '127.0.0.1'
const PREFIX = env.HEART_KEY_PREFIX ?? 'heart:'
const HISTORY_MAX = Number(env.HISTORY_MAX ?? 10000)
const API_KEYS = new Set((env.INGEST_API_KEYS ?? '').split(',').filter((k) => k !== ''))
const PING_INTERVAL_MS = Number(env.PING_INTERVAL_MS ?? 25000)
const USER_ID = /^[A-Za-z0-9_-]{1,64}$/
const BEARER = /^Bearer +([^ ]+)$/i

const redis = new Redis(env.REDIS_URL)
redis.defineCommand('heartIngest', { numberOfKeys: 8, lua: INGEST_LUA })
const sub = redis.duplicate()
const verify = createVerifier({ key: env.JWT_SECRET, algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] })

const meta = (userId) => userKeys(PREFIX, userId).meta
const channelOf = (userId) => userKeys(PREFIX, userId).channel

/** Watched user → the local sockets watching it. One Redis subscription per key. */
const watchers = new Map()

sub.on('message', (channel, message) => {
  const userId = channel.slice(1 + PREFIX.length, -'}:live'.length)
  const set = watchers.get(userId)
  if (set === undefined) return
  const list = JSON.parse(message)
  // The script also publishes alert episodes (`{"alert":…}`) on the channel: no frames for those here.
  if (!Array.isArray(list)) return
  for (const r of list) {
    const frame = `{"type":"reading","userId":"${userId}","id":"${r.id}","bpm":${r.bpm},"ts":${r.ts}}`
    for (const ws of set) ws.send(frame)
  }
})

async function subscribe (ws, state, userId) {
  if (!USER_ID.test(userId)) return ws.send('{"type":"error","code":"bad_request","message":"bad userId"}')
  if (state.watching.has(userId)) return
  // Another user's readings only with their grant: the owner's viewers set, as in ours.
  if (userId !== state.userId && await redis.sismember(userKeys(PREFIX, userId).viewers, state.userId) !== 1) {
    return ws.send(`{"type":"error","code":"forbidden","message":"not allowed to read ${userId}"}`)
  }
  if (ws.readyState !== 1 || state.watching.has(userId)) return
  state.watching.add(userId)
  let set = watchers.get(userId)
  if (set === undefined) {
    set = new Set()
    watchers.set(userId, set)
    set.add(ws)
    await sub.subscribe(channelOf(userId))
  } else {
    set.add(ws)
  }
  const [value, ts] = await redis.mget(PREFIX + userId, meta(userId))
  const t = ts === null ? null : ts.slice(0, ts.indexOf(':'))
  ws.send(`{"type":"subscribed","userId":"${userId}","current":${value === null ? 'null' : `{"bpm":${value},"ts":${t}}`}}`)
}

function unwatchAll (ws, state) {
  for (const userId of state.watching) {
    const set = watchers.get(userId)
    set.delete(ws)
    if (set.size === 0) {
      watchers.delete(userId)
      sub.unsubscribe(channelOf(userId)).catch(() => {})
    }
  }
}

async function onMessage (ws, state, data, isBinary) {
  try {
    const text = data.toString()
    if (isBinary) return ws.send('{"type":"error","code":"bad_request","message":"binary frames are not accepted"}')
    if (text.charCodeAt(0) !== 123) {
      if (text !== state.userId) return ws.send(`{"type":"error","code":"forbidden","message":"not allowed to read ${USER_ID.test(text) ? text : '?'}"}`)
      const value = await redis.get(PREFIX + text)
      if (ws.readyState === 1) ws.send(value ?? '0')
      return
    }
    const frame = JSON.parse(text)
    if (frame.type === 'subscribe' && typeof frame.userId === 'string') return await subscribe(ws, state, frame.userId)
    ws.send('{"type":"error","code":"bad_request","message":"unsupported frame"}')
  } catch {
    if (ws.readyState === 1) ws.send('{"type":"error","code":"internal","message":"internal error"}')
  }
}

const wss = new WebSocketServer({ noServer: true, maxPayload: Number(env.MAX_PAYLOAD_BYTES ?? 4096) })
const alive = new WeakSet()
function markAlive () { alive.add(this) }

wss.on('connection', (ws, userId) => {
  const state = { userId, watching: new Set() }
  alive.add(ws)
  ws.on('pong', markAlive)
  ws.on('message', (data, isBinary) => { markAlive.call(ws); onMessage(ws, state, data, isBinary) })
  ws.on('close', () => unwatchAll(ws, state))
})

setInterval(() => {
  for (const ws of wss.clients) {
    if (!alive.has(ws)) { ws.terminate(); continue }
    alive.delete(ws)
    ws.ping()
  }
}, PING_INTERVAL_MS).unref()

function reject (socket, status, message) {
  const body = JSON.stringify({ statusCode: status, message })
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
}

function send (res, status, body) {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

const isBpm = (v) => Number.isInteger(v) && v >= 20 && v <= 250
const isTs = (v) => v === undefined || (Number.isInteger(v) && v >= 1e12)

async function ingest (req, res, userId) {
  if (!API_KEYS.has(req.headers['x-api-key'])) return send(res, 401, { statusCode: 401, message: 'missing or unknown x-api-key' })
  const chunks = []
  for await (const c of req) chunks.push(c)
  let body
  try {
    body = JSON.parse(Buffer.concat(chunks).toString())
  } catch {
    return send(res, 400, { statusCode: 400, message: 'body is not JSON' })
  }
  const now = Date.now()
  const batch = body?.readings ?? [body]
  if (!Array.isArray(batch) || batch.length === 0 || batch.length > 500 || !batch.every((r) => isBpm(r?.bpm) && isTs(r.ts))) {
    return send(res, 400, { statusCode: 400, message: 'bad readings' })
  }
  const k = userKeys(PREFIX, userId)
  const args = [HISTORY_MAX, 'PUBLISH', k.channel, userId, EPISODES_MAX]
  // A reading without its own ts gets server time and skips the duplicate check (own = 0), as in ours.
  for (const r of batch) args.push(r.bpm, r.ts ?? now, r.ts === undefined ? 0 : 1)
  try {
    const [ids, duplicates, , newest] = await redis.heartIngest(k.current, k.meta, k.history, k.idsByTs, k.alertRules, k.alertState, k.alertLog, k.alerts, ...args)
    // With the offline rule on, the script answers the newest ts: the user goes on the offline sweep.
    if (typeof newest === 'string') await redis.zadd(`${PREFIX}alert-offline-due`, 'GT', newest, userId).catch(() => {})
    send(res, 202, { accepted: ids.length - duplicates, duplicates, ids })
  } catch {
    send(res, 503, { statusCode: 503, message: 'store unavailable' })
  }
}

const server = http.createServer((req, res) => {
  const m = /^\/heart\/([^/?]+)\/readings$/.exec(req.url)
  if (req.method === 'POST' && m !== null && USER_ID.test(m[1])) {
    void ingest(req, res, m[1])
    return
  }
  if (req.method === 'GET' && req.url === '/health') {
    void redis.ping().then(() => send(res, 200, { status: 'ok' }), () => send(res, 503, { status: 'unavailable' }))
    return
  }
  send(res, 404, { statusCode: 404, message: 'not found' })
})

server.on('upgrade', (req, socket, head) => {
  if (req.url.split('?')[0] !== '/heart/current') return reject(socket, 404, 'not found')
  const token = BEARER.exec(req.headers.authorization ?? '')?.[1]
  let userId
  try {
    const claims = verify(token ?? '')
    if (typeof claims.sub !== 'string' || !USER_ID.test(claims.sub)) throw new Error('sub')
    userId = claims.sub
  } catch {
    return reject(socket, 401, 'invalid token')
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, userId))
})

server.listen(PORT, HOST)
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
