import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { bearer, build, buildWithRedis, eventually, sharedRedis, uniquePrefix } from './helper.js'
import { APPID, APP_SECRET, TEMPLATE_ID, startStandIn, type StandIn } from './wechat-stand-in.js'
import { AlertNotifier, type NotifierOptions } from '../src/notify/alert-notifier.js'
import { SharedAccessToken } from '../src/notify/access-token.js'
import { MemoryNotifyState, type NotifyState } from '../src/notify/state.js'
import { RedisNotifyState } from '../src/notify/redis-state.js'
import { createWeChatApi } from '../src/notify/wechat-api.js'
import { messageData, parseTemplateFields } from '../src/notify/template.js'
import type { OpenedAlert } from '../src/notify/alert.js'
import type { Env } from '../plugins/config.js'
import { Redis } from 'ioredis'

const FIELDS = '{"thing1":"{owner} {kind}","number2":"{bpm}","time3":"{time}"}'

function alertEnv (standIn: StandIn, env: Env = {}): Env {
  return {
    WECHAT_APPID: APPID,
    WECHAT_SECRET: APP_SECRET,
    WECHAT_API_BASE: standIn.base,
    WECHAT_ALERT_TEMPLATE_ID: TEMPLATE_ID,
    WECHAT_ALERT_FIELDS: FIELDS,
    WECHAT_ALERT_PAGE: 'pages/watch/index',
    ...env
  }
}

let alerts = 0
function anAlert (userId: string, kind: OpenedAlert['kind'] = 'high'): OpenedAlert {
  return { alertId: `${Date.now()}-${++alerts}`, userId, kind, bpm: kind === 'offline' ? null : 150, openedAt: Date.UTC(2026, 11, 2, 7, 1) }
}

async function accept (app: FastifyInstance, userId: string, times = 1): Promise<number> {
  let remaining = 0
  for (let i = 0; i < times; i++) {
    const res = await app.inject({ method: 'POST', url: '/me/alert-subscriptions', headers: bearer(userId), payload: { templateId: TEMPLATE_ID } })
    t.equal(res.statusCode, 200, 'accepted')
    remaining = res.json().remaining
  }
  return remaining
}

async function remaining (app: FastifyInstance, userId: string): Promise<number> {
  const res = await app.inject({ method: 'GET', url: '/me/alert-subscriptions', headers: bearer(userId) })
  t.equal(res.statusCode, 200, res.body)
  return res.json().remaining
}

async function metric (app: FastifyInstance, name: string): Promise<string> {
  return await app.metrics.registry.getSingleMetricAsString(name)
}

/** A notifier built directly, for the timings the app fixes at WeChat's scale (10 minutes of retries). */
function notifier (standIn: StandIn, state: NotifyState, over: Partial<NotifierOptions> = {}): { n: AlertNotifier, events: string[], logs: string[] } {
  const api = createWeChatApi({ appId: APPID, secret: APP_SECRET, apiBase: standIn.base, timeoutMs: 1000 })
  const events: string[] = []
  const logs: string[] = []
  const line = (level: string) => (obj: object, msg: string) => { logs.push(`${level} ${msg} ${JSON.stringify(obj)}`) }
  const n = new AlertNotifier({
    api,
    state,
    tokens: new SharedAccessToken(api, state, 2000),
    viewersOf: async () => [],
    templateId: TEMPLATE_ID,
    fields: parseTemplateFields(FIELDS),
    miniprogramState: 'formal',
    retryForMs: 60_000,
    firstRetryMs: 20,
    log: { info: line('info'), warn: line('warn'), error: line('error') },
    counted: (e) => events.push(e.kind === 'failed' ? `failed:${e.errcode}` : e.kind),
    ...over
  })
  t.teardown(() => n.close())
  return { n, events, logs }
}

function noSecrets (t: Test, standIn: StandIn, lines: string[]): void {
  const text = lines.join('\n')
  t.notOk(text.includes(APP_SECRET), 'the app secret is in no log line')
  for (const token of standIn.issued) t.notOk(text.includes(token), 'no access token is in a log line')
}

for (const kind of ['redis', 'memory'] as const) {
  t.test(`${kind}: an opened alert reaches the owner and each viewer with a send left, once each, with the rendered template`, async (t) => {
    const standIn = await startStandIn(t)
    const logs: string[] = []
    const env = alertEnv(standIn)
    const app = kind === 'redis' ? await buildWithRedis(t, env, { logs }) : await build(t, env, { logs })
    t.equal(await app.heartStore.grant('mum', 'son', 100), true)
    t.equal(await app.heartStore.grant('mum', 'daughter', 100), true)
    t.equal(await accept(app, 'mum'), 1)
    t.equal(await accept(app, 'son', 2), 2)
    // daughter never accepted: nothing goes to her.
    const alert = anAlert('mum')
    app.alertOpened(alert)
    await app.alertNotifier!.idle()
    t.same(standIn.delivered.map((m) => m.touser).sort(), ['mum', 'son'])
    const msg = standIn.delivered[0]
    t.equal(msg.template_id, TEMPLATE_ID)
    t.equal(msg.page, 'pages/watch/index')
    t.equal(msg.miniprogram_state, 'formal')
    t.same(msg.data, { thing1: { value: 'mum 心率过高' }, number2: { value: '150' }, time3: { value: '2026年12月2日 15:01' } })
    t.equal(await remaining(app, 'mum'), 0)
    t.equal(await remaining(app, 'son'), 1)
    t.equal(await remaining(app, 'daughter'), 0)
    t.equal(standIn.tokenFetches, 1, 'one token fetch served both messages')
    // The same alert again (a second delivery of the event) sends nothing more.
    app.alertOpened(alert)
    await app.alertNotifier!.idle()
    t.equal(standIn.delivered.length, 2)
    t.match(await metric(app, 'heart_alerts_opened_total'), /kind="high"} 2/)
    t.match(await metric(app, 'heart_alert_messages_total'), /result="sent"} 2/)
    t.match(await metric(app, 'heart_alert_allowance_consumed_total'), / 2$/m)
    noSecrets(t, standIn, logs)
  })
}

t.test('two instances handed the same alert at once send each message once and fetch one token between them', async (t) => {
  const standIn = await startStandIn(t)
  const redis = await sharedRedis()
  const env = alertEnv(standIn, { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix() })
  const [a, b] = await Promise.all([build(t, env), build(t, env)])
  for (const v of ['v1', 'v2', 'v3']) t.equal(await a.heartStore.grant('dad', v, 100), true)
  // More sends allowed than alerts, so only the claim can keep a message from going twice.
  for (const u of ['dad', 'v1', 'v2', 'v3']) await accept(u === 'v2' ? b : a, u, 6)
  // Hold the token fetch until both instances are asking, so they race for it.
  standIn.delayMs = 50
  for (let i = 0; i < 3; i++) {
    const alert = anAlert('dad')
    a.alertOpened(alert)
    b.alertOpened(alert)
    await Promise.all([a.alertNotifier!.idle(), b.alertNotifier!.idle()])
  }
  t.equal(standIn.delivered.length, 12, 'three alerts × four recipients')
  const perPair = new Map<string, number>()
  for (const m of standIn.attempts) perPair.set(`${m.touser}`, (perPair.get(m.touser) ?? 0) + 1)
  t.same(Object.fromEntries(perPair), { dad: 3, v1: 3, v2: 3, v3: 3 }, 'one send per (alert, recipient): no second attempt anywhere')
  t.equal(standIn.tokenFetches, 1, 'the two instances shared one access token')
  for (const u of ['dad', 'v1', 'v2', 'v3']) t.equal(await remaining(b, u), 3)
})

t.test('an expired token (42001) is fetched again once and the message retried once; twice in a row it fails as 42001', async (t) => {
  const standIn = await startStandIn(t)
  const app = await buildWithRedis(t, alertEnv(standIn))
  await accept(app, 'gran', 3)
  app.alertOpened(anAlert('gran'))
  await app.alertNotifier!.idle()
  t.equal(standIn.delivered.length, 1)
  const first = standIn.issued[0]

  standIn.expireToken()
  app.alertOpened(anAlert('gran'))
  await app.alertNotifier!.idle()
  t.equal(standIn.delivered.length, 2, 'sent with a fresh token')
  t.equal(standIn.tokenFetches, 2)
  t.not(standIn.delivered[1].token, first)

  // WeChat keeps calling each new token invalid: one refetch, one retry, then give up.
  standIn.onSend = () => standIn.revokeToken()
  app.alertOpened(anAlert('gran'))
  await app.alertNotifier!.idle()
  t.equal(standIn.delivered.length, 2)
  t.equal(standIn.attempts.length, 5, 'two attempts for the third alert, no more')
  t.match(await metric(app, 'heart_alert_message_failures_total'), /errcode="40001"} 1/)
  t.equal(await remaining(app, 'gran'), 1, 'the send that could not go out is given back')
})

t.test('43101 (the user refused) sets that user\'s allowance to 0 and is not retried', async (t) => {
  const standIn = await startStandIn(t)
  const app = await buildWithRedis(t, alertEnv(standIn))
  await accept(app, 'owner1', 4)
  standIn.refusing.add('owner1')
  app.alertOpened(anAlert('owner1'))
  await app.alertNotifier!.idle()
  t.equal(standIn.attempts.length, 1)
  t.equal(await remaining(app, 'owner1'), 0)
  t.match(await metric(app, 'heart_alert_message_failures_total'), /errcode="43101"} 1/)
})

t.test('configuration errors (40037 and 47003) are counted, logged without the token, not retried, and the send is given back', async (t) => {
  const standIn = await startStandIn(t)
  const logs: string[] = []
  const app = await buildWithRedis(t, alertEnv(standIn, { WECHAT_ALERT_FIELDS: '{"thing1":"{owner} has a very high heart rate right now"}' }), { logs })
  await accept(app, 'u47003')
  app.alertOpened(anAlert('u47003'))
  await app.alertNotifier!.idle()
  t.equal(standIn.delivered.length, 1, 'thing values are cut to 20 characters, which WeChat accepts')
  t.equal([...standIn.delivered[0].data.thing1.value].length, 20)

  const { n, events, logs: own } = notifier(standIn, new MemoryNotifyState(), { templateId: 'not-our-template' })
  await n.addAllowance('u40037', 5)
  n.opened(anAlert('u40037'))
  await n.idle()
  t.same(events, ['consumed', 'failed:40037'])
  t.equal(await n.allowance('u40037'), 1)
  t.equal(standIn.attempts.length, 2, 'one attempt, no retry')
  t.match(own.join('\n'), /check WECHAT_ALERT_TEMPLATE_ID/)
  noSecrets(t, standIn, [...logs, ...own])
})

t.test('network errors, HTTP 5xx and errcode -1 are retried with backoff until they succeed, or until the retry time is up', async (t) => {
  const standIn = await startStandIn(t)
  const { n, events } = notifier(standIn, new MemoryNotifyState())
  await n.addAllowance('patient', 5)
  standIn.busy = 2
  standIn.failing = 1
  n.opened(anAlert('patient'))
  await n.idle()
  t.same(events, ['consumed', 'sent'])
  t.equal(standIn.attempts.length, 4, 'two busy answers, one 502, then sent')

  standIn.failing = 1e9
  const short = notifier(standIn, new MemoryNotifyState(), { retryForMs: 300 })
  await short.n.addAllowance('patient', 5)
  short.n.opened(anAlert('patient'))
  await short.n.idle()
  t.same(short.events, ['consumed', 'failed:timeout'])
  t.equal(await short.n.allowance('patient'), 1, 'given back when it never went out')

  // WeChat unreachable altogether (nothing listens there).
  const gone = notifier({ ...standIn, base: 'http://127.0.0.1:1' }, new MemoryNotifyState(), { retryForMs: 200 })
  await gone.n.addAllowance('patient', 5)
  gone.n.opened(anAlert('patient'))
  await gone.n.idle()
  t.same(gone.events, ['consumed', 'failed:timeout'])
})

t.test('a slow WeChat delays nothing: opened() returns at once and the message arrives later', async (t) => {
  const standIn = await startStandIn(t)
  standIn.delayMs = 600
  const { n, events } = notifier(standIn, new MemoryNotifyState())
  await n.addAllowance('slow', 1)
  const started = process.hrtime.bigint()
  n.opened(anAlert('slow'))
  const returnedAfterMs = Number(process.hrtime.bigint() - started) / 1e6
  t.ok(returnedAfterMs < 100, `opened() returned after ${returnedAfterMs.toFixed(1)} ms`)
  t.same(events, [], 'nothing sent yet')
  t.ok(await eventually(() => events.includes('sent'), 10_000), 'sent once WeChat answered')
})

t.test('wrong credentials (40125) fail the message without retrying for ten minutes', async (t) => {
  const standIn = await startStandIn(t)
  const api = createWeChatApi({ appId: APPID, secret: 'not-the-secret-of-this-app-000000', apiBase: standIn.base, timeoutMs: 1000 })
  const state = new MemoryNotifyState()
  const { n, events, logs } = notifier(standIn, state, { api, tokens: new SharedAccessToken(api, state, 1000) })
  await n.addAllowance('x', 1)
  n.opened(anAlert('x'))
  await n.idle()
  t.same(events, ['consumed', 'failed:40125'])
  t.equal(standIn.tokenFetches, 1)
  t.match(logs.join('\n'), /check WECHAT_APPID and WECHAT_SECRET/)
  t.notOk(logs.join('\n').includes('not-the-secret'), 'the secret is not logged')
})

t.test('the shared token expires in Redis before WeChat\'s expiry, and another instance reuses it meanwhile', async (t) => {
  const standIn = await startStandIn(t)
  standIn.expiresInS = 7200
  const redis = await sharedRedis()
  const client = new Redis(redis.url)
  t.teardown(() => client.disconnect())
  const prefix = uniquePrefix()
  const state = new RedisNotifyState(client, prefix)
  const api = createWeChatApi({ appId: APPID, secret: APP_SECRET, apiBase: standIn.base, timeoutMs: 1000 })
  const one = new SharedAccessToken(api, state, 2000)
  const two = new SharedAccessToken(api, new RedisNotifyState(client, prefix), 2000)
  const [x, y] = await Promise.all([one.get(), two.get()])
  t.ok(x.ok && y.ok && x.value === y.value)
  t.equal(standIn.tokenFetches, 1)
  const ttl = await client.pttl(`${prefix}wechat:access-token`)
  t.ok(ttl > 6000 * 1000 && ttl <= 6900 * 1000, `cached for ${ttl} ms: five minutes short of 7200 s`)
})

t.test('/me/alert-subscriptions: 401 without a token, 400 for another template, 501 when not configured, capped at 50', async (t) => {
  const standIn = await startStandIn(t)
  const app = await build(t, alertEnv(standIn))
  const anon = await app.inject({ method: 'POST', url: '/me/alert-subscriptions', payload: { templateId: TEMPLATE_ID } })
  t.equal(anon.statusCode, 401)
  const wrong = await app.inject({ method: 'POST', url: '/me/alert-subscriptions', headers: bearer('u'), payload: { templateId: 'other' } })
  t.equal(wrong.statusCode, 400)
  t.match(wrong.json().message, /body\/templateId/)
  for (let i = 0; i < 50; i++) await accept(app, 'u')
  t.equal(await accept(app, 'u'), 50, 'the 51st acceptance leaves 50')

  const off = await build(t)
  for (const method of ['GET', 'POST'] as const) {
    const res = await off.inject({ method, url: '/me/alert-subscriptions', headers: bearer('u'), ...(method === 'POST' ? { payload: { templateId: TEMPLATE_ID } } : {}) })
    t.equal(res.statusCode, 501)
    t.match(res.json(), { statusCode: 501, message: /not configured/ })
  }
})

t.test('message values follow WeChat\'s rules for their type', async (t) => {
  const data = messageData(parseTemplateFields('{"thing1":"{owner}","phrase2":"{kind}","number3":"{bpm}","date4":"{time}","character_string5":"{owner}{owner}"}'), {
    alertId: '1-1', userId: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o', kind: 'offline', bpm: null, openedAt: Date.UTC(2026, 0, 5, 23, 30)
  })
  t.same(data, {
    thing1: { value: 'oUpF8uMuAJO_M2pxb1Q9' },
    phrase2: { value: '设备离线' },
    number3: { value: '0' },
    date4: { value: '2026年1月6日' },
    character_string5: { value: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6ooUpF' }
  })
  t.throws(() => parseTemplateFields('[]'), /WECHAT_ALERT_FIELDS/)
  t.throws(() => parseTemplateFields('{"thing1":"{name}"}'), /\{name\} in "thing1"/)
  t.throws(() => parseTemplateFields('{"1thing":"x"}'), /not a template key/)
  t.throws(() => parseTemplateFields('{"thing1":5}'), /must be a string/)
  t.throws(() => parseTemplateFields('{'), /JSON object/)
})
