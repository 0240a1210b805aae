/**
 * PUT/GET/DELETE /heart/:userId/alert-rules on both stores: the owner sets and removes them,
 * the owner and granted viewers read them, every bad field is a 400 that names it.
 */
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { RedisServer, bearer, build, buildWithRedis, sharedRedis, uniquePrefix } from './helper.js'

type Builder = (t: Test) => Promise<FastifyInstance>
const stores: Array<[string, Builder]> = [
  ['embedded', (t) => build(t)],
  ['redis', (t) => buildWithRedis(t)]
]

const URL = '/heart/u1/alert-rules'

async function put (app: FastifyInstance, as: string, payload: unknown, url = URL): Promise<{ status: number, body: any }> {
  const res = await app.inject({ method: 'PUT', url, headers: bearer(as), payload: payload as object })
  return { status: res.statusCode, body: res.json() }
}

async function get (app: FastifyInstance, as: string): Promise<{ status: number, body: any }> {
  const res = await app.inject({ method: 'GET', url: URL, headers: bearer(as) })
  return { status: res.statusCode, body: res.json() }
}

for (const [name, make] of stores) {
  t.test(`${name}: the owner sets, reads and removes the rules; a viewer reads them; others are refused`, async (t) => {
    const app = await make(t)
    t.equal((await app.inject({ method: 'PUT', url: '/shares/viewer', headers: bearer('u1') })).statusCode, 200)

    const full = { high: 120, low: 45, sustainS: 10, offline: true }
    t.same(await put(app, 'u1', full), { status: 200, body: { userId: 'u1', ...full } })
    t.same(await get(app, 'u1'), { status: 200, body: { userId: 'u1', ...full } }, 'the owner reads them')
    t.same(await get(app, 'viewer'), { status: 200, body: { userId: 'u1', ...full } }, 'a granted viewer reads them')
    t.match(await get(app, 'stranger'), { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'not allowed to read u1' } })

    t.match(await put(app, 'viewer', full), { status: 403, body: { statusCode: 403, message: /only the user themselves/ } }, 'a viewer may not set them')
    t.match(await put(app, 'stranger', { high: 'nonsense' }), { status: 403 }, 'refused before the body is looked at')
    const noToken = await app.inject({ method: 'PUT', url: URL, payload: full })
    t.equal(noToken.statusCode, 401)
    t.equal((await app.inject({ method: 'DELETE', url: URL, headers: bearer('viewer') })).statusCode, 403, 'a viewer may not remove them')

    t.same(await put(app, 'u1', { high: 140 }), { status: 200, body: { userId: 'u1', high: 140, sustainS: 0, offline: false } }, 'replaced as a whole, with the defaults')
    t.same(await get(app, 'u1'), { status: 200, body: { userId: 'u1', high: 140, sustainS: 0, offline: false } })
    t.same(await put(app, 'u1', {}), { status: 200, body: { userId: 'u1', sustainS: 0, offline: false } }, 'an empty body is rules without limits')

    const del = await app.inject({ method: 'DELETE', url: URL, headers: bearer('u1') })
    t.equal(del.statusCode, 204)
    t.equal(del.body, '')
    t.match(await get(app, 'u1'), { status: 404, body: { statusCode: 404, message: 'u1 has no alert rules' } })
    t.match(await get(app, 'viewer'), { status: 404 })
    t.equal((await app.inject({ method: 'DELETE', url: URL, headers: bearer('u1') })).statusCode, 204, 'removing again is harmless')
  })
}

const BAD: Array<[string, unknown, RegExp]> = [
  ['high below 30', { high: 29 }, /^body\/high must be >= 30$/],
  ['high above 250', { high: 251 }, /^body\/high must be <= 250$/],
  ['low below 30', { low: 29 }, /^body\/low must be >= 30$/],
  ['low as a string', { low: '45' }, /^body\/low must be integer$/],
  ['a fractional high', { high: 120.5 }, /^body\/high must be integer$/],
  ['low equal to high', { high: 100, low: 100 }, /^body\/low must be below body\/high$/],
  ['low above high', { high: 100, low: 120 }, /^body\/low must be below body\/high$/],
  ['sustainS above 600', { sustainS: 601 }, /^body\/sustainS must be <= 600$/],
  ['a negative sustainS', { sustainS: -1 }, /^body\/sustainS must be >= 0$/],
  ['offline as a string', { offline: 'yes' }, /^body\/offline must be boolean$/],
  ['an unknown property', { high: 120, hihg: 130 }, /^body\/hihg is not an accepted property$/],
  ['an array', [], /^body must be object$/]
]

t.test('every bad body is a 400 naming the field, and leaves the stored rules alone', async (t) => {
  const app = await build(t)
  const stored = { high: 120, low: 45, sustainS: 10, offline: true }
  await put(app, 'u1', stored)
  for (const [what, body, message] of BAD) {
    const res = await put(app, 'u1', body)
    t.equal(res.status, 400, what)
    t.match(res.body, { statusCode: 400, error: 'Bad Request', message }, what)
  }
  t.same((await get(app, 'u1')).body, { userId: 'u1', ...stored }, 'unchanged')
  t.match(await put(app, 'u1', stored, '/heart/bad%20id/alert-rules'), { status: 403 }, 'another path is not yours, whatever it says')
})

t.test('redis: the rules are the documented hash on the user\'s slot', async (t) => {
  const redis = await sharedRedis()
  const prefix = uniquePrefix()
  const app = await build(t, { REDIS_URL: redis.url, HEART_KEY_PREFIX: prefix })
  const probe = new Redis(redis.port, '127.0.0.1')
  t.teardown(() => probe.disconnect())
  await put(app, 'u1', { high: 120, low: 45, sustainS: 10, offline: true })
  t.same(await probe.hgetall(`{${prefix}u1}:alert-rules`), { high: '120', low: '45', sustainS: '10', offline: '1' })
  await put(app, 'u1', { low: 50 })
  t.same(await probe.hgetall(`{${prefix}u1}:alert-rules`), { low: '50', sustainS: '0', offline: '0' })
  await app.inject({ method: 'DELETE', url: URL, headers: bearer('u1') })
  t.equal(await probe.exists(`{${prefix}u1}:alert-rules`), 0)
})

t.test('while Redis is down: 503 in the one error shape, for setting and for reading', async (t) => {
  const server = await RedisServer.start()
  t.teardown(() => server.stop())
  const app = await build(t, { REDIS_URL: server.url })
  await server.stop()
  t.match(await put(app, 'u1', { high: 120 }), { status: 503, body: { statusCode: 503, error: 'Service Unavailable', message: 'heart-rate store is unavailable, try again shortly' } })
  t.match(await get(app, 'u1'), { status: 503 })
})
