import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import { WebSocket } from 'ws'
import { redactUrl } from '../src/logger.js'
import { Frames, TEST_SECRET, build, eventually, token } from './helper.js'

const PATH = '/heart/current'

function b64url (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

const nowS = (): number => Math.floor(Date.now() / 1000)

/** Signs with the test secret and exactly the claims given (no `exp` unless given). */
function signRaw (claims: Record<string, unknown>, algorithm: 'HS256' | 'HS512' = 'HS256'): string {
  return createSigner({ key: TEST_SECRET, algorithm })(claims)
}

interface Refusal {
  headers?: Record<string, string>
  query?: string
  message?: RegExp
}

/** The upgrade is refused with 401 before any upgrade, and plain HTTP shows the JSON body. */
async function assertRefused (t: Test, app: FastifyInstance, { headers = {}, query = '', message }: Refusal): Promise<void> {
  await t.rejects(app.injectWS(PATH + query, { headers }), { message: 'Unexpected server response: 401' }, 'no upgrade')
  const res = await app.inject({ method: 'GET', url: PATH + query, headers })
  t.equal(res.statusCode, 401)
  t.equal(res.headers['www-authenticate'], 'Bearer')
  t.match(res.headers['content-type'], /^application\/json/)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['error', 'message', 'statusCode'])
  t.match(body, { statusCode: 401, error: 'Unauthorized', message: message ?? /./ })
}

/** The upgrade succeeds and the socket answers as the token's user. */
async function assertAccepted (t: Test, app: FastifyInstance, path: string, headers: Record<string, string> = {}): Promise<void> {
  const frames = new Frames(await app.injectWS(path, { headers }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', userId: 'u1' }, 'served as u1')
}

t.test('the upgrade is refused with 401 when no token is sent', async (t) => {
  const app = await build(t)
  await assertRefused(t, app, { message: /missing token/ })
})

t.test('the upgrade is refused with 401 for Authorization: Basic', async (t) => {
  const app = await build(t)
  await assertRefused(t, app, { headers: { authorization: `Basic ${Buffer.from('u1:pw').toString('base64')}` }, message: /Bearer/ })
})

t.test('the upgrade is refused with 401 for Authorization: Bearer without a token', async (t) => {
  const app = await build(t)
  await assertRefused(t, app, { headers: { authorization: 'Bearer' }, message: /Bearer/ })
})

t.test('the upgrade is refused with 401 for a Bearer token that is not a JWT', async (t) => {
  const app = await build(t)
  await assertRefused(t, app, { headers: { authorization: 'Bearer not.a.jwt' }, message: /invalid token/ })
  await assertRefused(t, app, { headers: { authorization: 'Bearer garbage' }, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for a token signed with another secret', async (t) => {
  const app = await build(t)
  const forged = token('u1', { secret: 'another-secret-of-at-least-32-characters!' })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${forged}` }, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for an unsigned alg:none token', async (t) => {
  const app = await build(t)
  const unsigned = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ sub: 'u1', exp: nowS() + 3600 })}.`
  await assertRefused(t, app, { headers: { authorization: `Bearer ${unsigned}` }, message: /invalid token/ })
  await assertRefused(t, app, { query: `?access_token=${unsigned}`, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for a token signed with the secret but another algorithm (HS512)', async (t) => {
  const app = await build(t)
  const hs512 = signRaw({ sub: 'u1', exp: nowS() + 3600 }, 'HS512')
  await assertRefused(t, app, { headers: { authorization: `Bearer ${hs512}` }, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for an expired token', async (t) => {
  const app = await build(t)
  const expired = signRaw({ sub: 'u1', iat: nowS() - 120, exp: nowS() - 60 })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${expired}` }, message: /expired/ })
  await assertRefused(t, app, { query: `?access_token=${expired}`, message: /expired/ })
})

t.test('the upgrade is refused with 401 for a token without exp', async (t) => {
  const app = await build(t)
  const forever = signRaw({ sub: 'u1' })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${forever}` }, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for a token without sub', async (t) => {
  const app = await build(t)
  const nobody = signRaw({ exp: nowS() + 3600 })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${nobody}` }, message: /invalid token/ })
})

t.test('the upgrade is refused with 401 for a token whose sub is not a valid user id', async (t) => {
  const app = await build(t)
  for (const sub of ['a:b', 'x'.repeat(65), '', 'a b', 12345]) {
    const bad = signRaw({ sub, exp: nowS() + 3600 })
    await assertRefused(t, app, { headers: { authorization: `Bearer ${bad}` }, message: /invalid token/ })
  }
})

t.test('a valid token in Authorization: Bearer opens the socket', async (t) => {
  const app = await build(t)
  await assertAccepted(t, app, PATH, { authorization: `Bearer ${token('u1')}` })
})

t.test('the Bearer scheme is matched case-insensitively', async (t) => {
  const app = await build(t)
  await assertAccepted(t, app, PATH, { authorization: `bearer ${token('u1')}` })
})

t.test('a valid token in ?access_token= opens the socket (browsers cannot set headers)', async (t) => {
  const app = await build(t)
  await assertAccepted(t, app, `${PATH}?access_token=${token('u1')}`)
})

t.test('a user id of 64 characters is accepted as sub', async (t) => {
  const app = await build(t)
  const long = 'a'.repeat(64)
  const frames = new Frames(await app.injectWS(PATH, { headers: { authorization: `Bearer ${token(long)}` } }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'get', userId: long }), { type: 'current', userId: long })
})

/** Log lines as objects, for the assertions below. */
function parsed (logs: string[]): Array<Record<string, any>> {
  return logs.map((l) => JSON.parse(l))
}

t.test('a token in ?access_token= is never logged: the url is logged with [redacted]', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const tok = token('u1')
  const frames = new Frames(await app.injectWS(`${PATH}?v=2&access_token=${tok}`))
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  frames.ws.terminate()
  t.ok(await eventually(() => logs.some((l) => l.includes('socket closed')), 3000), 'the close is logged')
  const requests = parsed(logs).filter((l) => l.msg === 'incoming request')
  t.equal(requests.length, 1)
  t.equal(requests[0].req.url, `${PATH}?v=2&access_token=[redacted]`)
  t.notOk(logs.some((l) => l.includes(tok)), 'no log line holds the token')
  t.notOk(logs.some((l) => l.includes(tok.split('.')[2])), 'nor its signature')
})

t.test('a refused token in ?access_token= is not logged either', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const expired = signRaw({ sub: 'u1', exp: nowS() - 60 })
  await assertRefused(t, app, { query: `?access_token=${expired}` })
  t.ok(logs.some((l) => l.includes('access_token=[redacted]')))
  t.notOk(logs.some((l) => l.includes(expired)))
})

t.test('a token under a percent-encoded access_token name is accepted and still redacted', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const tok = token('u1')
  await assertAccepted(t, app, `${PATH}?access%5Ftoken=${tok}`)
  t.ok(logs.some((l) => l.includes('access%5Ftoken=[redacted]')))
  t.notOk(logs.some((l) => l.includes(tok)), 'no log line holds the token')
})

t.test('the Authorization header is never logged', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const tok = token('u1')
  const frames = new Frames(await app.injectWS(PATH, { headers: { authorization: `Bearer ${tok}` } }))
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  frames.ws.terminate()
  await app.inject({ method: 'GET', url: PATH, headers: { authorization: `Bearer ${tok}x` } })
  await app.inject({ method: 'GET', url: PATH, headers: { authorization: 'Basic dTE6c2VjcmV0' } })
  t.ok(await eventually(() => logs.some((l) => l.includes('socket closed')), 3000), 'the close is logged')
  t.ok(logs.length > 0)
  t.notOk(logs.some((l) => l.includes(tok)), 'no log line holds the token')
  t.notOk(logs.some((l) => l.includes('dTE6c2VjcmV0')), 'nor Basic credentials')
  t.notOk(logs.some((l) => /"authorization"\s*:/i.test(l)), 'no log line has an authorization field')
})

t.test('over real TCP the token is not logged and the close is logged with its code', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  const tok = token('u1')
  const ws = new WebSocket(`ws://127.0.0.1:${port}${PATH}?access_token=${tok}`)
  t.teardown(() => ws.terminate())
  const frames = new Frames(ws)
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' })
  ws.close(4001, 'bye')
  t.equal(await frames.closed, 4001)
  t.ok(await eventually(() => logs.some((l) => l.includes('socket closed')), 3000), 'the close is logged')
  const lines = parsed(logs)
  const request = lines.find((l) => l.msg === 'incoming request')
  t.match(request, { reqId: String, req: { url: `${PATH}?access_token=[redacted]` } })
  t.match(lines.find((l) => l.msg === 'socket closed'), { level: 30, userId: 'u1', code: 4001, reqId: request?.reqId })
  t.notOk(logs.some((l) => l.includes(tok)))
})

t.test('redactUrl replaces only access_token values and keeps the rest of the url', async (t) => {
  t.equal(redactUrl('/heart/current'), '/heart/current')
  t.equal(redactUrl('/heart/current?v=1'), '/heart/current?v=1')
  t.equal(redactUrl('/heart/current?access_token=abc'), '/heart/current?access_token=[redacted]')
  t.equal(redactUrl('/x?a=1&access_token=abc&b=2'), '/x?a=1&access_token=[redacted]&b=2')
  t.equal(redactUrl('/x?access_token=a&access_token=b'), '/x?access_token=[redacted]&access_token=[redacted]')
  t.equal(redactUrl('/x?ACCESS_TOKEN=abc'), '/x?ACCESS_TOKEN=[redacted]')
  t.equal(redactUrl('/x?%61ccess%5Ftoken=abc'), '/x?%61ccess%5Ftoken=[redacted]')
  t.equal(redactUrl('/x?my_access_token_hint=abc'), '/x?my_access_token_hint=abc')
})

t.test('a token in the URL of an unknown route is redacted from the 404 and the logs', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const secret = token('u1')
  for (const url of [`/heart/current/?access_token=${secret}`, `/nope?x=1&access_token=${secret}`]) {
    const res = await app.inject(url)
    t.equal(res.statusCode, 404)
    t.notMatch(res.body, secret, 'not in the answer')
    t.match(res.json().message, /access_token=\[redacted\]/)
  }
  t.notOk(logs.some((l) => l.includes(secret)), 'not in any log line')
})

t.test('HTTP routes take the token from the Authorization header only, never from ?access_token=', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  const tok = token('u1')
  for (const url of ['/heart/u1/readings', '/shares', '/shares/watching']) {
    const viaQuery = await app.inject({ url: `${url}?access_token=${tok}` })
    t.equal(viaQuery.statusCode, 401, `${url}?access_token= is refused`)
    t.match(viaQuery.json(), { statusCode: 401, message: /Authorization: Bearer.*WebSocket only/ })
    t.equal(viaQuery.headers['www-authenticate'], 'Bearer')
    const viaHeader = await app.inject({ url, headers: { authorization: `Bearer ${tok}` } })
    t.equal(viaHeader.statusCode, 200, `${url} with the header is served`)
  }
  const put = await app.inject({ method: 'PUT', url: `/shares/u2?access_token=${tok}` })
  t.equal(put.statusCode, 401, 'nor does a write')
  t.notOk(logs.some((l) => l.includes(tok)), 'the token is in no log line')
})

t.test('an upgrade request to a route that is not a WebSocket is refused with 400, and its URL token is never logged', async (t) => {
  const logs: string[] = []
  const app = await build(t, {}, { logs })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  const tok = token('u1')
  for (const path of ['/heart/u1/readings', '/shares', '/health']) {
    await t.rejects(app.injectWS(`${path}?access_token=${tok}`), { message: 'Unexpected server response: 400' }, `${path} (inject)`)
    // Over real TCP too: this is where @fastify/websocket would upgrade, then log the raw URL while closing.
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}${path}?access_token=${tok}`, { headers: { authorization: `Bearer ${tok}` } })
      ws.once('open', () => { ws.terminate(); resolve(101) })
      ws.once('unexpected-response', (req, res) => { req.destroy(); resolve(res.statusCode ?? 0) })
      ws.once('error', reject)
    })
    t.equal(status, 400, `${path} (TCP)`)
  }
  const frames = new Frames(await app.injectWS(`${PATH}?access_token=${tok}`))
  t.match(await frames.ask({ type: 'ping' }), { type: 'pong' }, 'the WebSocket route still upgrades')
  frames.ws.terminate()
  t.ok(logs.some((l) => l.includes('/heart/u1/readings?access_token=[redacted]')), 'the refused request is logged, redacted')
  t.notOk(logs.some((l) => l.includes(tok)), 'no log line holds the token')
  t.notOk(logs.some((l) => l.includes(tok.split('.')[2])), 'nor its signature')
})

const ISSUER = 'https://login.example'
const AUDIENCE = 'heart-app'

t.test('with JWT_ISSUER and JWT_AUDIENCE (HS256) every token must carry both, on the socket, in refresh and over HTTP', async (t) => {
  const app = await build(t, { JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE, ENABLE_DEV_LOGIN: 'true' })
  const claims = { iss: ISSUER, aud: AUDIENCE }
  const refusedTokens: Array<[string, string, RegExp]> = [
    ['neither', token('u1'), /invalid token: (issuer|audience)/],
    ['no aud', token('u1', { claims: { iss: ISSUER } }), /invalid token: audience/],
    ['no iss', token('u1', { claims: { aud: AUDIENCE } }), /invalid token: issuer/],
    ['another issuer', token('u1', { claims: { ...claims, iss: 'https://other.example' } }), /invalid token: issuer/],
    ['another audience', token('u1', { claims: { ...claims, aud: 'other-app' } }), /invalid token: audience/],
    ['an audience list without ours', token('u1', { claims: { ...claims, aud: ['a', 'b'] } }), /invalid token: audience/]
  ]
  for (const [what, jwt, message] of refusedTokens) {
    await t.test(`a token with ${what} is refused`, async (t) => {
      await assertRefused(t, app, { headers: { authorization: `Bearer ${jwt}` }, message })
      const res = await app.inject({ url: '/heart/u1/readings', headers: { authorization: `Bearer ${jwt}` } })
      t.equal(res.statusCode, 401, 'history too')
    })
  }
  await assertAccepted(t, app, PATH, { authorization: `Bearer ${token('u1', { claims })}` })
  await assertAccepted(t, app, PATH, { authorization: `Bearer ${token('u1', { claims: { ...claims, aud: ['other-app', AUDIENCE] } })}` })

  const login = await app.inject({ method: 'POST', url: '/auth/dev', payload: { userId: 'u1' } })
  t.equal(login.statusCode, 200)
  const minted = login.json().token as string
  t.match(JSON.parse(Buffer.from(minted.split('.')[1], 'base64url').toString()), { sub: 'u1', ...claims }, 'tokens minted here carry iss and aud')
  const frames = new Frames(await app.injectWS(PATH, { headers: { authorization: `Bearer ${minted}` } }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'refresh', token: token('u1'), reqId: 'r' }), { type: 'error', code: 'unauthorized', message: /issuer|audience/, reqId: 'r' },
    'refresh refuses a token without them')
  t.match(await frames.ask({ type: 'refresh', token: minted, reqId: 'r2' }), { type: 'refreshed', reqId: 'r2' })
})

t.test('exp and nbf allow JWT_CLOCK_TOLERANCE_S (default 5 s) of difference between clocks', async (t) => {
  const app = await build(t)
  const strict = await build(t, { JWT_CLOCK_TOLERANCE_S: '0' })
  const expiredJustNow = signRaw({ sub: 'u1', exp: nowS() - 2 })
  const notYet = signRaw({ sub: 'u1', nbf: nowS() + 3, exp: nowS() + 3600 })
  // Accepted, and the socket is not closed at once for an expiry it was allowed past.
  await assertAccepted(t, app, PATH, { authorization: `Bearer ${expiredJustNow}` })
  await assertAccepted(t, app, PATH, { authorization: `Bearer ${notYet}` })
  await assertRefused(t, strict, { headers: { authorization: `Bearer ${expiredJustNow}` }, message: /expired/ })
  await assertRefused(t, strict, { headers: { authorization: `Bearer ${notYet}` }, message: /not valid yet/ })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${signRaw({ sub: 'u1', exp: nowS() - 10 })}` }, message: /expired/ })
  await assertRefused(t, app, { headers: { authorization: `Bearer ${signRaw({ sub: 'u1', nbf: nowS() + 30, exp: nowS() + 3600 })}` }, message: /not valid yet/ })
})
