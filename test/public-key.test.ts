import t, { type Test } from 'tap'
import { createHmac, generateKeyPairSync } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import { Frames, TEST_SECRET, build, token } from './helper.js'

const spki = { type: 'spki', format: 'pem' } as const
const pkcs8 = { type: 'pkcs8', format: 'pem' } as const
const rsaPair = (): { publicKey: string, privateKey: string } => generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: spki, privateKeyEncoding: pkcs8 })
const ecPair = (namedCurve: string): { publicKey: string, privateKey: string } => generateKeyPairSync('ec', { namedCurve, publicKeyEncoding: spki, privateKeyEncoding: pkcs8 })

const rsa = rsaPair()
const ec = ecPair('P-256')

/** A token as the account service would mint it. */
function signed (privateKey: string, algorithm: 'RS256' | 'ES256', userId = 'u1', ttlS = 600): string {
  return createSigner({ key: privateKey, algorithm, expiresIn: ttlS * 1000 })({ sub: userId })
}

/** An HS256 token whose HMAC key is `secret` as given (for the algorithm-confusion attack: the public key PEM). */
function hs256With (secret: string, userId = 'u1'): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const input = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: userId, exp: Math.floor(Date.now() / 1000) + 600 })}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

const bearer = (jwt: string): { authorization: string } => ({ authorization: `Bearer ${jwt}` })

async function assertSocketOpens (t: Test, app: FastifyInstance, jwt: string): Promise<void> {
  const frames = new Frames(await app.injectWS('/heart/current', { headers: bearer(jwt) }))
  t.teardown(() => frames.ws.terminate())
  t.match(await frames.ask({ type: 'get', userId: 'u1' }), { type: 'current', userId: 'u1' }, 'the socket serves u1')
}

async function assertRefused (t: Test, app: FastifyInstance, jwt: string): Promise<void> {
  await t.rejects(app.injectWS('/heart/current', { headers: bearer(jwt) }), { message: 'Unexpected server response: 401' }, 'the upgrade is refused')
  const res = await app.inject({ method: 'GET', url: '/heart/u1/readings', headers: bearer(jwt) })
  t.equal(res.statusCode, 401, 'history is refused')
}

t.test('with an RSA JWT_PUBLIC_KEY an RS256 token opens the socket and reads history', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey })
  const jwt = signed(rsa.privateKey, 'RS256')
  await assertSocketOpens(t, app, jwt)
  const res = await app.inject({ method: 'GET', url: '/heart/u1/readings', headers: bearer(jwt) })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { userId: 'u1', readings: [] })
  t.equal(app.tokens.verify(jwt).userId, 'u1')
})

t.test('the hand-made HS256 token of the confusion test is well formed: HS256 mode accepts it with JWT_SECRET', async (t) => {
  const app = await build(t)
  await assertSocketOpens(t, app, hs256With(TEST_SECRET))
})

t.test('public-key mode refuses an HS256 token signed with the public key PEM as HMAC secret (algorithm confusion)', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey })
  await assertRefused(t, app, hs256With(rsa.publicKey))
  await assertRefused(t, app, hs256With(rsa.publicKey.trim()))
})

t.test('public-key mode refuses an HS256 token signed with the app\'s JWT_SECRET', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey, JWT_SECRET: TEST_SECRET })
  await assertRefused(t, app, token('u1'))
})

t.test('public-key mode refuses an RS256 token signed by another key', async (t) => {
  const other = rsaPair()
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey })
  await assertRefused(t, app, signed(other.privateKey, 'RS256'))
})

t.test('public-key mode refuses an expired RS256 token', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey })
  const expired = createSigner({ key: rsa.privateKey, algorithm: 'RS256' })({ sub: 'u1', exp: Math.floor(Date.now() / 1000) - 60 })
  await assertRefused(t, app, expired)
})

t.test('HS256 mode (no JWT_PUBLIC_KEY) refuses an RS256 token', async (t) => {
  const app = await build(t)
  await assertRefused(t, app, signed(rsa.privateKey, 'RS256'))
})

t.test('with a P-256 EC JWT_PUBLIC_KEY an ES256 token opens the socket', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: ec.publicKey })
  await assertSocketOpens(t, app, signed(ec.privateKey, 'ES256'))
  await t.test('and an RS256 token is refused', async (t) => {
    await assertRefused(t, app, signed(rsa.privateKey, 'RS256'))
  })
  await t.test('and an HS256 token signed with the public key PEM is refused', async (t) => {
    await assertRefused(t, app, hs256With(ec.publicKey))
  })
})

t.test('a JWT_PUBLIC_KEY with literal \\n sequences (as env vars carry it) works', async (t) => {
  const oneLine = rsa.publicKey.trim().replace(/\n/g, '\\n')
  t.notMatch(oneLine, /\n/, 'the setting is one line')
  const app = await build(t, { JWT_PUBLIC_KEY: oneLine })
  await assertSocketOpens(t, app, signed(rsa.privateKey, 'RS256'))
})

t.test('an unusable JWT_PUBLIC_KEY stops start-up with a message naming it', async (t) => {
  const ed25519 = generateKeyPairSync('ed25519', { publicKeyEncoding: spki, privateKeyEncoding: pkcs8 })
  const cases: Array<[string, string]> = [
    ['text that is not a PEM', 'not a key'],
    ['a truncated PEM', rsa.publicKey.slice(0, 120)],
    ['an Ed25519 key', ed25519.publicKey],
    ['a P-384 EC key', ecPair('P-384').publicKey]
  ]
  for (const [name, value] of cases) {
    await t.rejects(build(t, { JWT_PUBLIC_KEY: value }), { message: /JWT_PUBLIC_KEY/ }, name)
  }
})

t.test('POST /auth/wechat answers 501 in public-key mode, even with WeChat configured', async (t) => {
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey, WECHAT_APPID: 'wx0123456789abcdef', WECHAT_SECRET: 'wechat-app-secret', WECHAT_API_BASE: 'http://127.0.0.1:9' })
  t.equal(app.tokens.issue, null, 'this service mints no tokens')
  const res = await app.inject({ method: 'POST', url: '/auth/wechat', payload: { code: 'abc' } })
  t.equal(res.statusCode, 501)
  t.match(res.json(), { statusCode: 501, error: 'Not Implemented', message: /account service/ })
})

t.test('production starts without JWT_SECRET when JWT_PUBLIC_KEY is set', async (t) => {
  const app = await build(t, { NODE_ENV: 'production', JWT_SECRET: undefined, JWT_PUBLIC_KEY: rsa.publicKey })
  t.equal(app.config.NODE_ENV, 'production')
  t.equal(app.config.JWT_SECRET, undefined)
  await assertSocketOpens(t, app, signed(rsa.privateKey, 'RS256'))
})

t.test('with JWT_ISSUER and JWT_AUDIENCE, public-key mode accepts only tokens that carry both', async (t) => {
  const iss = 'https://accounts.example'
  const aud = 'heart-gateway'
  const app = await build(t, { JWT_PUBLIC_KEY: rsa.publicKey, JWT_ISSUER: iss, JWT_AUDIENCE: aud })
  const mint = (claims: Record<string, unknown>): string => createSigner({ key: rsa.privateKey, algorithm: 'RS256', expiresIn: 600_000 })({ sub: 'u1', ...claims })
  await assertSocketOpens(t, app, mint({ iss, aud }))
  const res = await app.inject({ method: 'GET', url: '/heart/u1/readings', headers: bearer(mint({ iss, aud })) })
  t.equal(res.statusCode, 200, 'history with both')
  // The same key minting for another service: its tokens are not ours to accept.
  for (const claims of [{}, { iss }, { aud }, { iss: 'https://other.example', aud }, { iss, aud: 'another-service' }]) {
    await t.test(`refused with ${JSON.stringify(claims)}`, async (t) => assertRefused(t, app, mint(claims)))
  }
})
