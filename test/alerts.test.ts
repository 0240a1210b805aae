import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import {
  bearer, build, buildWithRedis, eventually, openSocket, openWebSocket, sharedRedis, startServer, token, uniquePrefix,
  type Frames, type ServerProcess
} from './helper.js'
import { APPID, APP_SECRET, TEMPLATE_ID, startStandIn } from './wechat-stand-in.js'
import type { Env } from '../plugins/config.js'

const KEY = 'alerts-ingest-key'

async function setRules (app: FastifyInstance, userId: string, rules: object): Promise<void> {
  const res = await app.inject({ method: 'PUT', url: `/heart/${userId}/alert-rules`, headers: bearer(userId), payload: rules })
  t.equal(res.statusCode, 200, 'rules stored')
}

async function ingest (app: FastifyInstance, userId: string, body: object): Promise<void> {
  const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: body })
  t.equal(res.statusCode, 202, 'ingested')
}

/** The alert frames that arrive before the answer to a ping: what is left once everything sent has arrived. */
async function alertsBeforePong (frames: Frames): Promise<any[]> {
  const seen: any[] = []
  frames.ws.send(JSON.stringify({ type: 'ping' }))
  await frames.until((f) => {
    if (f.type === 'alert') seen.push(f)
    return f.type === 'pong'
  })
  return seen
}

/** The next alert frame, skipping readings. */
async function nextAlert (frames: Frames, ms = 5000): Promise<any> {
  return await frames.until((f) => f.type === 'alert', ms)
}

for (const kind of ['memory', 'redis'] as const) {
  t.test(`${kind}: owner and viewer hear an episode open and close once each; subscribed lists it while open; GET alerts lists it`, async (t) => {
    const env: Env = { INGEST_API_KEYS: KEY }
    const app = kind === 'redis' ? await buildWithRedis(t, env) : await build(t, env)
    const put = await app.inject({ method: 'PUT', url: '/shares/son', headers: bearer('mum') })
    t.equal(put.statusCode, 200)
    await setRules(app, 'mum', { high: 120, low: 45 })
    const owner = await openSocket(app, 'mum')
    const viewer = await openSocket(app, 'son')
    t.teardown(() => { owner.ws.terminate(); viewer.ws.terminate() })
    t.match(await owner.ask({ type: 'subscribe', userId: 'mum' }), { type: 'subscribed', alerts: [] })
    t.match(await viewer.ask({ type: 'subscribe', userId: 'mum' }), { type: 'subscribed', alerts: [] })

    const t0 = Date.now()
    await ingest(app, 'mum', { readings: [{ bpm: 100, ts: t0 - 3000 }, { bpm: 150, ts: t0 - 2000 }, { bpm: 160, ts: t0 - 1000 }] })
    const open = await nextAlert(viewer)
    t.match(open, { type: 'alert', userId: 'mum', kind: 'high', state: 'open', bpm: 150, ts: t0 - 2000, openedAt: t0 - 2000 })
    t.same(await nextAlert(owner), open, 'the owner gets the same frame')

    // A viewer that reconnects sees the open episode in subscribed, and no second alert frame for it.
    const late = await openSocket(app, 'son')
    t.teardown(() => late.ws.terminate())
    const sub = await late.ask({ type: 'subscribe', userId: 'mum' })
    t.same(sub.alerts, [{ ...open, type: undefined }].map(({ type, ...a }) => a))
    const list = await app.inject({ method: 'GET', url: '/heart/mum/alerts', headers: bearer('son') })
    t.equal(list.statusCode, 200)
    t.same(list.json().alerts.map((a: any) => `${a.kind}:${a.state}`), ['high:open'])

    await ingest(app, 'mum', { readings: [{ bpm: 118, ts: t0 }, { bpm: 100, ts: t0 + 1 }] })
    const closed = await nextAlert(viewer)
    t.match(closed, { type: 'alert', alertId: open.alertId, state: 'closed', closedAt: t0 + 1 })
    t.same(await nextAlert(owner), closed)
    t.same(await nextAlert(late), closed, 'the reconnected viewer hears the closing, not the opening again')
    t.same(await alertsBeforePong(viewer), [], 'no further alert frame after the closing')

    const after = await app.inject({ method: 'GET', url: `/heart/mum/alerts?since=${open.alertId}`, headers: bearer('son') })
    t.same(after.json().alerts, [])
    const forbidden = await app.inject({ method: 'GET', url: '/heart/mum/alerts', headers: bearer('stranger') })
    t.equal(forbidden.statusCode, 403)
    const bad = await app.inject({ method: 'GET', url: '/heart/mum/alerts?since=yesterday', headers: bearer('son') })
    t.equal(bad.statusCode, 400)
  })
}

t.test('offline: the hub\'s timer opens the episode once, with the status frame, and the next reading closes it', async (t) => {
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '1000' })
  await setRules(app, 'dad', { offline: true })
  const frames = await openSocket(app, 'dad', { withStatus: true })
  t.teardown(() => frames.ws.terminate())
  await frames.ask({ type: 'subscribe', userId: 'dad' })
  await ingest(app, 'dad', { bpm: 70 })
  t.match(await frames.until((f) => f.type === 'status' && f.state === 'offline', 5000), { state: 'offline' })
  const open = await nextAlert(frames)
  t.match(open, { kind: 'offline', state: 'open', bpm: 70 })
  t.equal(open.openedAt, open.ts + 1000)
  await ingest(app, 'dad', { bpm: 72 })
  t.match(await nextAlert(frames), { kind: 'offline', state: 'closed', alertId: open.alertId })
})

async function watch (tt: Test, server: ServerProcess, viewer: string, userId: string): Promise<Frames> {
  const frames = await openWebSocket(tt, `ws://127.0.0.1:${server.port}/heart/current`, { headers: { authorization: `Bearer ${token(viewer)}` } })
  await frames.ask({ type: 'subscribe', userId })
  return frames
}

t.test('two instances: readings posted to both at the same moment open the episode exactly once, and viewers on both hear it once', async (t) => {
  const redis = await sharedRedis()
  const env = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY }
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  const rules = await fetch(`${a.url}/heart/gran/alert-rules`, { method: 'PUT', headers: { ...bearer('gran'), 'content-type': 'application/json' }, body: JSON.stringify({ high: 120 }) })
  t.equal(rules.status, 200)
  const onA = await watch(t, a, 'gran', 'gran')
  const onB = await watch(t, b, 'gran', 'gran')
  const post = async (s: ServerProcess, bpm: number, ts: number): Promise<number> => (await fetch(`${s.url}/heart/gran/readings`, {
    method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ bpm, ts })
  })).status
  const t0 = Date.now()
  for (let round = 0; round < 5; round++) {
    const ts = t0 + round * 10
    // Both above the limit, at once, on two instances: one opens it, the other finds it open.
    t.same(await Promise.all([post(a, 150, ts), post(b, 155, ts + 1)]), [202, 202])
    const [x, y] = [await nextAlert(onA), await nextAlert(onB)]
    t.same(x, y, `round ${round}: the same opening on both instances`)
    t.equal(x.state, 'open')
    t.same(await Promise.all([post(a, 80, ts + 5), post(b, 81, ts + 6)]), [202, 202])
    t.match(await nextAlert(onA), { alertId: x.alertId, state: 'closed' })
    t.match(await nextAlert(onB), { alertId: x.alertId, state: 'closed' })
  }
  const list = await (await fetch(`${b.url}/heart/gran/alerts`, { headers: bearer('gran') })).json() as { alerts: any[] }
  t.equal(list.alerts.length, 5, 'five episodes, not ten')
  t.same(await alertsBeforePong(onA), [], 'no second alert frame on A')
  t.same(await alertsBeforePong(onB), [], 'nor on B')
})

t.test('an alert reaches the WeChat stand-in: time from the reading to the frame and to the message', async (t) => {
  const standIn = await startStandIn(t)
  const app = await buildWithRedis(t, {
    INGEST_API_KEYS: KEY,
    WECHAT_APPID: APPID,
    WECHAT_SECRET: APP_SECRET,
    WECHAT_API_BASE: standIn.base,
    WECHAT_ALERT_TEMPLATE_ID: TEMPLATE_ID,
    WECHAT_ALERT_FIELDS: '{"thing1":"{owner}","phrase2":"{kind}","number3":"{bpm}","time4":"{time}"}'
  })
  await setRules(app, 'mum', { high: 120 })
  t.equal((await app.inject({ method: 'PUT', url: '/shares/son', headers: bearer('mum') })).statusCode, 200)
  for (const u of ['mum', 'son']) {
    t.equal((await app.inject({ method: 'POST', url: '/me/alert-subscriptions', headers: bearer(u), payload: { templateId: TEMPLATE_ID } })).statusCode, 200)
  }
  const viewer = await openSocket(app, 'son')
  t.teardown(() => viewer.ws.terminate())
  await viewer.ask({ type: 'subscribe', userId: 'mum' })
  const arrived: number[] = []
  standIn.onSend = () => arrived.push(performance.now())
  const started = performance.now()
  await ingest(app, 'mum', { bpm: 150 })
  const frame = await nextAlert(viewer)
  const frameMs = performance.now() - started
  await app.alertNotifier!.idle()
  t.same(standIn.delivered.map((m) => m.touser).sort(), ['mum', 'son'])
  t.match(standIn.delivered[0].data, { phrase2: { value: '心率过高' }, number3: { value: '150' } })
  t.equal(frame.state, 'open')
  const messageMs = Math.max(...arrived) - started
  t.comment(`reading → alert frame ${frameMs.toFixed(1)} ms; reading → stand-in has both messages ${messageMs.toFixed(1)} ms`)
  // A closed alert sends nothing.
  await ingest(app, 'mum', { bpm: 80 })
  t.match(await nextAlert(viewer), { state: 'closed' })
  await app.alertNotifier!.idle()
  t.equal(standIn.attempts.length, 2)
})

for (const kind of ['memory', 'redis'] as const) {
  t.test(`${kind}: a user nobody watches goes offline: the sweep opens the episode once and the WeChat message goes out`, async (t) => {
    const standIn = await startStandIn(t)
    const env: Env = {
      INGEST_API_KEYS: KEY,
      OFFLINE_AFTER_MS: '1000',
      WECHAT_APPID: APPID,
      WECHAT_SECRET: APP_SECRET,
      WECHAT_API_BASE: standIn.base,
      WECHAT_ALERT_TEMPLATE_ID: TEMPLATE_ID,
      WECHAT_ALERT_FIELDS: '{"thing1":"{owner}","phrase2":"{kind}"}'
    }
    const app = kind === 'redis' ? await buildWithRedis(t, env) : await build(t, env)
    await setRules(app, 'grandpa', { offline: true })
    t.equal((await app.inject({ method: 'PUT', url: '/shares/carer', headers: bearer('grandpa') })).statusCode, 200)
    t.equal((await app.inject({ method: 'POST', url: '/me/alert-subscriptions', headers: bearer('carer'), payload: { templateId: TEMPLATE_ID } })).statusCode, 200)
    await ingest(app, 'grandpa', { bpm: 66 })
    t.ok(await eventually(() => standIn.delivered.length === 1, 8000), 'the carer is messaged although no socket watches grandpa')
    t.match(standIn.delivered[0], { touser: 'carer', data: { phrase2: { value: '设备离线' } } })
    const list = await app.inject({ method: 'GET', url: '/heart/grandpa/alerts', headers: bearer('carer') })
    t.same(list.json().alerts.map((a: any) => `${a.kind}:${a.state}`), ['offline:open'])
    // The next reading closes it; no second opening while it stays open.
    await ingest(app, 'grandpa', { bpm: 70 })
    const after = await app.inject({ method: 'GET', url: '/heart/grandpa/alerts', headers: bearer('carer') })
    t.same(after.json().alerts.map((a: any) => `${a.kind}:${a.state}`), ['offline:closed'])
  })
}

t.test('two instances, readings posted to both at once: each recipient gets one WeChat message per episode', async (t) => {
  const standIn = await startStandIn(t)
  const redis = await sharedRedis()
  const env = {
    REDIS_URL: redis.url,
    HEART_KEY_PREFIX: uniquePrefix(),
    INGEST_API_KEYS: KEY,
    WECHAT_APPID: APPID,
    WECHAT_SECRET: APP_SECRET,
    WECHAT_API_BASE: standIn.base,
    WECHAT_ALERT_TEMPLATE_ID: TEMPLATE_ID,
    WECHAT_ALERT_FIELDS: '{"thing1":"{owner}","number2":"{bpm}"}'
  }
  const a = await startServer(t, env)
  const b = await startServer(t, env)
  const json = { 'content-type': 'application/json' }
  t.equal((await fetch(`${a.url}/heart/mum/alert-rules`, { method: 'PUT', headers: { ...bearer('mum'), ...json }, body: JSON.stringify({ high: 120 }) })).status, 200)
  t.equal((await fetch(`${b.url}/shares/son`, { method: 'PUT', headers: bearer('mum') })).status, 200)
  for (const [server, user] of [[a, 'mum'], [b, 'son'], [a, 'son']] as const) {
    // More sends allowed than episodes: only the claim keeps a message from going twice.
    for (let i = 0; i < 3; i++) {
      t.equal((await fetch(`${server.url}/me/alert-subscriptions`, { method: 'POST', headers: { ...bearer(user), ...json }, body: JSON.stringify({ templateId: TEMPLATE_ID }) })).status, 200)
    }
  }
  const post = async (s: ServerProcess, bpm: number, ts: number): Promise<number> => (await fetch(`${s.url}/heart/mum/readings`, {
    method: 'POST', headers: { 'x-api-key': KEY, ...json }, body: JSON.stringify({ bpm, ts })
  })).status
  const t0 = Date.now()
  for (let round = 0; round < 2; round++) {
    const ts = t0 + round * 10
    t.same(await Promise.all([post(a, 150, ts), post(b, 152, ts + 1)]), [202, 202])
    t.same(await Promise.all([post(a, 80, ts + 5), post(b, 82, ts + 6)]), [202, 202])
  }
  t.ok(await eventually(() => standIn.delivered.length >= 4, 10_000), 'two episodes × two recipients')
  // A second send would have taken a second send from the allowance, before it went out.
  const list = await (await fetch(`${b.url}/heart/mum/alerts`, { headers: bearer('mum') })).json() as { alerts: unknown[] }
  t.equal(list.alerts.length, 2)
  const left = await (await fetch(`${a.url}/me/alert-subscriptions`, { headers: bearer('son') })).json() as { remaining: number }
  t.equal(left.remaining, 4, 'six accepted, two spent: one per episode')
  t.same(standIn.delivered.map((m) => m.touser).sort(), ['mum', 'mum', 'son', 'son'])
})
