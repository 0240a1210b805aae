import t, { type Test } from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Frames, TEST_SECRET, build, freePort } from './helper.js'
import type { Env } from '../plugins/config.js'

const APPID = 'wx0123456789abcdef'
const SECRET = 'wechat-app-secret-5f0c2b9e7d1a4c38'
const OPENID = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o'
const SESSION_KEY = 'tiihtNczf5v6AKRyjwEUhQ=='
const CODE = '081KQhGa1xQy1H0Fz7Ja1DbB3y1KQhGl'

type Answer = (res: ServerResponse, req: IncomingMessage) => void

interface FakeWeChat {
  base: string
  /** Query strings of the requests received, in order. */
  requests: URLSearchParams[]
}

/** Answers with a JSON body labelled text/plain, as WeChat sometimes does. */
function json (body: unknown, status = 200): Answer {
  return (res) => {
    res.writeHead(status, { 'content-type': 'text/plain' })
    res.end(JSON.stringify(body))
  }
}

const success = json({ session_key: SESSION_KEY, openid: OPENID })
const errcode = (code: number, errmsg: string): Answer => json({ errcode: code, errmsg: `${errmsg}, rid: 65f0a1b2-3c4d5e6f`, session_key: SESSION_KEY })

/** A stand-in for api.weixin.qq.com on 127.0.0.1, answering /sns/jscode2session as WeChat documents it. */
async function fakeWeChat (t: Test, answer: Answer): Promise<FakeWeChat> {
  const requests: URLSearchParams[] = []
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    if (req.method !== 'GET' || url.pathname !== '/sns/jscode2session') {
      res.writeHead(404).end()
      return
    }
    requests.push(url.searchParams)
    answer(res, req)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests }
}

function wechatEnv (base: string, env: Env = {}): Env {
  return { WECHAT_APPID: APPID, WECHAT_SECRET: SECRET, WECHAT_API_BASE: base, ...env }
}

async function login (app: FastifyInstance, body: unknown = { code: CODE }): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/auth/wechat', payload: body as object })
}

/** Nothing WeChat-secret (session_key, the code, the app secret) is in any of these texts. */
function assertNoSecrets (t: Test, texts: string[], what: string): void {
  for (const [name, value] of [['session_key', SESSION_KEY], ['code', CODE], ['WECHAT_SECRET', SECRET]]) {
    t.notOk(texts.some((text) => text.includes(value)), `no ${what} contains the ${name}`)
  }
}

/** Logs in against a fake WeChat answering `answer`; checks the error body and that nothing secret leaked. */
async function assertLoginFails (t: Test, answer: Answer | string, status: number, code?: string, env: Env = {}): Promise<LightMyRequestResponse> {
  const base = typeof answer === 'string' ? answer : (await fakeWeChat(t, answer)).base
  const logs: string[] = []
  const app = await build(t, wechatEnv(base, env), { logs })
  const res = await login(app)
  t.equal(res.statusCode, status)
  t.match(res.headers['content-type'], /^application\/json/)
  const body = res.json()
  t.same(Object.keys(body).sort(), code === undefined ? ['error', 'message', 'statusCode'] : ['code', 'error', 'message', 'statusCode'])
  t.match(body, { statusCode: status, error: /./, message: /./ })
  t.equal(body.code, code)
  t.notMatch(res.body, /rid:|errmsg|errcode|system error/, 'nothing of WeChat\'s answer is passed through')
  assertNoSecrets(t, [res.body], 'response body')
  assertNoSecrets(t, logs, 'log line')
  return res
}

t.test('a valid code logs in: the token verifies with sub = openid, lasts TOKEN_TTL_S and opens /heart/current', async (t) => {
  const wechat = await fakeWeChat(t, success)
  const logs: string[] = []
  const app = await build(t, wechatEnv(wechat.base, { TOKEN_TTL_S: '600' }), { logs })
  const res = await login(app)
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['expiresIn', 'token', 'userId'])
  t.equal(body.userId, OPENID)
  t.equal(body.expiresIn, 600)
  const principal = app.tokens.verify(body.token)
  t.equal(principal.userId, OPENID)
  t.ok(Math.abs(principal.exp - (Math.floor(Date.now() / 1000) + 600)) <= 2, 'exp is TOKEN_TTL_S from now')

  const frames = new Frames(await app.injectWS('/heart/current', { headers: { authorization: 'Bearer ' + body.token } }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'get', userId: OPENID }), { type: 'current', userId: OPENID }, 'the socket serves the openid')

  assertNoSecrets(t, [res.body], 'response body')
  assertNoSecrets(t, logs, 'log line')
  t.notOk(logs.some((line) => line.includes(body.token)), 'no log line contains the token')
})

t.test('WeChat is asked with the configured appid and secret, the code and grant_type=authorization_code', async (t) => {
  const wechat = await fakeWeChat(t, success)
  const app = await build(t, wechatEnv(wechat.base))
  t.equal((await login(app)).statusCode, 200)
  t.equal(wechat.requests.length, 1)
  const query = wechat.requests[0]
  t.same(Object.fromEntries(query), { appid: APPID, secret: SECRET, js_code: CODE, grant_type: 'authorization_code' })
})

t.test('a code with characters that need escaping reaches WeChat unchanged', async (t) => {
  const wechat = await fakeWeChat(t, success)
  const app = await build(t, wechatEnv(wechat.base))
  const code = 'a&secret=x#y z+/='
  t.equal((await login(app, { code })).statusCode, 200)
  t.equal(wechat.requests[0].get('js_code'), code)
  t.equal(wechat.requests[0].get('secret'), SECRET)
})

t.test('an errcode of 0 with an openid is a success', async (t) => {
  const wechat = await fakeWeChat(t, json({ errcode: 0, errmsg: 'ok', session_key: SESSION_KEY, openid: OPENID, unionid: 'o6_bmasdasdsad6_2sgVt7hMZOPfL' }))
  const app = await build(t, wechatEnv(wechat.base))
  const res = await login(app)
  t.equal(res.statusCode, 200)
  t.equal(res.json().userId, OPENID)
  t.notMatch(res.body, /unionid|o6_bmasdasdsad6/, 'unionid is not passed on')
})

t.test('errcode 40029 (invalid code) answers 401 invalid_code', async (t) => {
  await assertLoginFails(t, errcode(40029, 'invalid code'), 401, 'invalid_code')
})

t.test('errcode 40163 (code already used) answers 401 invalid_code', async (t) => {
  await assertLoginFails(t, errcode(40163, 'code been used'), 401, 'invalid_code')
})

t.test('errcode 45011 (WeChat rate limit) answers 429', async (t) => {
  await assertLoginFails(t, errcode(45011, 'api minute-quota reach limit'), 429, 'wechat_rate_limited')
})

t.test('errcode 40226 (blocked user) answers 403', async (t) => {
  await assertLoginFails(t, errcode(40226, 'invalid user'), 403, 'user_blocked')
})

t.test('errcode -1 (WeChat busy) answers 502', async (t) => {
  await assertLoginFails(t, errcode(-1, 'system error'), 502, 'wechat_unavailable')
})

t.test('an unknown errcode answers 502', async (t) => {
  await assertLoginFails(t, errcode(40013, 'invalid appid'), 502, 'wechat_unavailable')
})

t.test('HTTP 500 from WeChat answers 502', async (t) => {
  await assertLoginFails(t, json({ errcode: -1, errmsg: 'system error', session_key: SESSION_KEY }, 500), 502, 'wechat_unavailable')
})

t.test('a body that is not JSON answers 502 without passing it on', async (t) => {
  await assertLoginFails(t, (res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end(`<html>system error ${SESSION_KEY}</html>`)
  }, 502, 'wechat_unavailable')
})

t.test('an answer far larger than any WeChat answer is not read to the end and answers 502', async (t) => {
  await assertLoginFails(t, json({ openid: OPENID, session_key: SESSION_KEY, padding: 'x'.repeat(64 * 1024) }), 502, 'wechat_unavailable')
})

t.test('an answer without a usable openid answers 502', async (t) => {
  await t.test('no openid', async (t) => {
    await assertLoginFails(t, json({ session_key: SESSION_KEY }), 502, 'wechat_unavailable')
  })
  await t.test('an openid outside the user id rule', async (t) => {
    await assertLoginFails(t, json({ session_key: SESSION_KEY, openid: 'o:pF8u/Mu' }), 502, 'wechat_unavailable')
  })
})

t.test('a refused connection to WeChat answers 502', async (t) => {
  const closedPort = await freePort()
  await assertLoginFails(t, `http://127.0.0.1:${closedPort}`, 502, 'wechat_unavailable')
})

t.test('WeChat answering later than WECHAT_TIMEOUT_MS answers 502 at about the timeout', async (t) => {
  const slow: Answer = (res, req) => {
    const timer = setTimeout(() => success(res, req), 5000)
    res.on('close', () => clearTimeout(timer))
  }
  const wechat = await fakeWeChat(t, slow)
  const app = await build(t, wechatEnv(wechat.base, { WECHAT_TIMEOUT_MS: '300' }))
  const before = Date.now()
  const res = await login(app)
  const elapsed = Date.now() - before
  t.equal(res.statusCode, 502)
  t.equal(res.json().code, 'wechat_unavailable')
  t.equal(wechat.requests.length, 1, 'WeChat was asked')
  t.ok(elapsed >= 250 && elapsed < 1500, `answered after ${elapsed} ms (timeout 300 ms)`)
})

t.test('WeChat stalling in the middle of its body is cut off by the same timeout', async (t) => {
  const wechat = await fakeWeChat(t, (res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('{"session_key":"')
  })
  const app = await build(t, wechatEnv(wechat.base, { WECHAT_TIMEOUT_MS: '300' }))
  const before = Date.now()
  const res = await login(app)
  const elapsed = Date.now() - before
  t.equal(res.statusCode, 502)
  t.ok(elapsed < 1500, `answered after ${elapsed} ms (timeout 300 ms)`)
})

t.test('without WECHAT_APPID and WECHAT_SECRET the endpoint answers 501 saying what to set', async (t) => {
  for (const env of [{}, { WECHAT_APPID: APPID }, { WECHAT_SECRET: SECRET }] as Env[]) {
    const app = await build(t, env)
    const res = await login(app)
    t.equal(res.statusCode, 501)
    t.match(res.json(), { statusCode: 501, error: 'Not Implemented', message: /WECHAT_APPID.*WECHAT_SECRET/ })
    await app.close()
  }
})

t.test('the body is validated: code must be a string of 1 to 128 characters and nothing else', async (t) => {
  const wechat = await fakeWeChat(t, success)
  const app = await build(t, wechatEnv(wechat.base, { LOGIN_RATE_LIMIT: '100' }))
  const cases: Array<[string, unknown, RegExp]> = [
    ['no code', {}, /code/],
    ['an empty code', { code: '' }, /code/],
    ['a code of 129 characters', { code: 'a'.repeat(129) }, /code/],
    ['a code that is a number', { code: 12345 }, /code/],
    ['an unknown property', { code: CODE, session_key: 'x' }, /additional properties/]
  ]
  for (const [name, body, message] of cases) {
    const res = await login(app, body)
    t.equal(res.statusCode, 400, name)
    t.match(res.json(), { statusCode: 400, error: 'Bad Request', message }, name)
  }
  t.equal((await login(app, { code: 'a'.repeat(128) })).statusCode, 200, 'a code of 128 characters is accepted')
  t.equal(wechat.requests.length, 1, 'WeChat was asked only for the valid body')
})

t.test('logins are rate limited per client: with LOGIN_RATE_LIMIT=3 the 4th in a minute gets 429', async (t) => {
  const wechat = await fakeWeChat(t, success)
  const app = await build(t, wechatEnv(wechat.base, { LOGIN_RATE_LIMIT: '3' }))
  for (let i = 1; i <= 3; i++) t.equal((await login(app)).statusCode, 200, `login ${i}`)
  const res = await login(app)
  t.equal(res.statusCode, 429)
  t.match(res.json(), { statusCode: 429, error: 'Too Many Requests', message: /rate limit/ })
  t.ok(Number(res.headers['retry-after']) > 0, 'retry-after is set')
  t.equal(wechat.requests.length, 3, 'the refused login did not reach WeChat')
  const other = await app.inject({ method: 'POST', url: '/auth/wechat', payload: { code: CODE }, remoteAddress: '10.0.0.7' })
  t.equal(other.statusCode, 200, 'another client address still logs in')
})

t.test('dev login is off by default: POST /auth/dev is 404', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'POST', url: '/auth/dev', payload: { userId: 'u1' } })
  t.equal(res.statusCode, 404)
})

t.test('dev login with ENABLE_DEV_LOGIN=true outside production mints a token and says so at start-up', async (t) => {
  const logs: string[] = []
  const app = await build(t, { ENABLE_DEV_LOGIN: 'true', TOKEN_TTL_S: '900' }, { logs })
  t.ok(logs.some((line) => JSON.parse(line).level === 40 && /dev login is on/.test(line)), 'start-up warning')
  const res = await app.inject({ method: 'POST', url: '/auth/dev', payload: { userId: 'u1' } })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['expiresIn', 'token', 'userId'])
  t.match(body, { userId: 'u1', expiresIn: 900 })
  t.equal(app.tokens.verify(body.token).userId, 'u1')
  const frames = new Frames(await app.injectWS('/heart/current', { headers: { authorization: 'Bearer ' + body.token } }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', userId: 'u1' })
})

t.test('dev login validates the user id', async (t) => {
  const app = await build(t, { ENABLE_DEV_LOGIN: 'true' })
  for (const body of [{ userId: 'a:b' }, { userId: '' }, { userId: 'x'.repeat(65) }, {}, { userId: 7 }]) {
    const res = await app.inject({ method: 'POST', url: '/auth/dev', payload: body })
    t.equal(res.statusCode, 400, JSON.stringify(body))
    t.match(res.json(), { statusCode: 400, message: /userId/ })
  }
})

t.test('dev login stays off in production even with ENABLE_DEV_LOGIN=true, and start-up warns it was ignored', async (t) => {
  const logs: string[] = []
  const app = await build(t, { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET, ENABLE_DEV_LOGIN: 'true' }, { logs })
  const res = await app.inject({ method: 'POST', url: '/auth/dev', payload: { userId: 'u1' } })
  t.equal(res.statusCode, 404)
  t.ok(logs.some((line) => JSON.parse(line).level === 40 && /ENABLE_DEV_LOGIN is ignored/.test(line)), 'warning logged')
  t.notOk(logs.some((line) => /dev login is on/.test(line)), 'no claim that it is on')
})
