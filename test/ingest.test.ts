import { mkdtemp, rm } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import type { Env } from '../plugins/config.js'
import { RedisServer, bearer, builders, eventually, openSocket, sharedRedis, token, type BuildOptions } from './helper.js'

const KEY = 'k1'
const INGEST_ENV: Env = { INGEST_API_KEYS: 'k1,k2' }
const ID = /^\d+-\d+$/
/** A fixed past time, so readings ordered by `ts` do not depend on the clock. */
const T0 = 1_764_115_200_000

async function post (app: FastifyInstance, userId: string, body: unknown, key: string | null = KEY) {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (key !== null) headers['x-api-key'] = key
  return await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers, payload: typeof body === 'string' ? body : JSON.stringify(body) })
}

/** POSTs with the path exactly as given: no URL normalisation on the way. */
async function rawPost (address: string, path: string, body: unknown): Promise<{ status: number, body: string }> {
  const { hostname, port } = new URL(address)
  return await new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY } }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.setTimeout(5000, () => req.destroy(new Error('no answer within 5 s')))
    req.on('error', reject)
    req.end(JSON.stringify(body))
  })
}

interface Reading { id: string, bpm: number, ts: number }

/** The user's whole history (up to 1000), oldest first, read through the route. */
async function history (app: FastifyInstance, userId: string, limit = 1000): Promise<Reading[]> {
  const res = await app.inject({ url: `/heart/${userId}/readings?limit=${limit}`, headers: bearer(userId) })
  if (res.statusCode !== 200) throw new Error(`history answered ${res.statusCode}: ${res.body}`)
  return res.json().readings
}

function readings (n: number, from = T0): Array<{ bpm: number, ts: number }> {
  return Array.from({ length: n }, (_, i) => ({ bpm: 40 + (i % 200), ts: from + i * 1000 }))
}

function increasing (ids: string[]): boolean {
  for (let i = 1; i < ids.length; i++) {
    const [am, as] = ids[i - 1].split('-').map(BigInt)
    const [bm, bs] = ids[i].split('-').map(BigInt)
    if (!(bm > am || (bm === am && bs > as))) return false
  }
  return true
}

async function rawClient (t: Test, server?: RedisServer): Promise<Redis> {
  const client = (server ?? await sharedRedis()).client()
  t.teardown(() => { client.disconnect() })
  return client
}

for (const { store, build: builder } of builders) {
  const make = async (t: Test, env: Env = {}, opts?: BuildOptions): Promise<FastifyInstance> =>
    await builder(t, { ...INGEST_ENV, ...env }, opts)

  t.test(`ingest on ${store}`, async (t) => {
    t.test('auth', async (t) => {
      const app = await make(t)

      t.test('without x-api-key answers 401 JSON', async (t) => {
        const res = await post(app, 'u1', { bpm: 72 }, null)
        t.equal(res.statusCode, 401)
        t.match(res.headers['content-type'], /application\/json/)
        t.match(res.json(), { statusCode: 401, error: 'Unauthorized', message: /x-api-key/ })
        t.same(await history(app, 'u1'), [])
      })

      t.test('with an unknown key answers 401', async (t) => {
        for (const key of ['k3', '', 'k1,k2', 'K1', 'k1 ']) {
          const res = await post(app, 'u1', { bpm: 72 }, key)
          t.equal(res.statusCode, 401, `key ${JSON.stringify(key)}`)
        }
        t.same(await history(app, 'u1'), [])
      })

      t.test('each configured key is accepted', async (t) => {
        for (const key of ['k1', 'k2']) {
          const res = await post(app, 'u2', { bpm: 72 }, key)
          t.equal(res.statusCode, 202, `key ${key}`)
        }
        t.equal((await history(app, 'u2')).length, 2)
      })

      t.test('a Bearer token writes its own user\'s readings', async (t) => {
        const res = await app.inject({ method: 'POST', url: '/heart/wearer/readings', headers: { ...bearer('wearer'), 'content-type': 'application/json' }, payload: { bpm: 72, ts: T0 } })
        t.equal(res.statusCode, 202)
        t.match(res.json(), { accepted: 1, duplicates: 0 })
        t.same((await history(app, 'wearer')).map((r) => r.bpm), [72])
      })

      t.test('a Bearer token of another user answers 403 and writes nothing', async (t) => {
        const res = await app.inject({ method: 'POST', url: '/heart/victim/readings', headers: { ...bearer('wearer'), 'content-type': 'application/json' }, payload: { bpm: 72 } })
        t.equal(res.statusCode, 403)
        t.match(res.json(), { statusCode: 403, error: 'Forbidden', message: /token only its own user/ })
        t.same(await history(app, 'victim'), [])
      })

      t.test('a bad, expired or malformed Bearer token answers 401 with the challenge, before the body', async (t) => {
        for (const authorization of [`Bearer ${token('wearer', { secret: 'another-secret-of-at-least-32-characters!' })}`, `Bearer ${token('wearer', { ttlS: -10 })}`, 'Basic d2VhcmVyOng=']) {
          const res = await app.inject({ method: 'POST', url: '/heart/wearer2/readings', headers: { authorization, 'content-type': 'application/json' }, payload: { bpm: 5 } })
          t.equal(res.statusCode, 401, authorization.slice(0, 12))
          t.equal(res.headers['www-authenticate'], 'Bearer')
        }
        t.same(await history(app, 'wearer2'), [])
      })

      t.test('x-api-key decides when both are sent', async (t) => {
        const res = await app.inject({ method: 'POST', url: '/heart/victim/readings', headers: { ...bearer('wearer'), 'x-api-key': 'nope', 'content-type': 'application/json' }, payload: { bpm: 72 } })
        t.equal(res.statusCode, 401)
        const service = await app.inject({ method: 'POST', url: '/heart/victim2/readings', headers: { ...bearer('wearer'), 'x-api-key': KEY, 'content-type': 'application/json' }, payload: { bpm: 72 } })
        t.equal(service.statusCode, 202, 'a service key writes for anyone, whatever token comes with it')
      })

      t.test('the key is checked before the body', async (t) => {
        const res = await post(app, 'u1', { bpm: 5 }, 'nope')
        t.equal(res.statusCode, 401)
      })
    })

    t.test('without INGEST_API_KEYS every request answers 401 and start-up warns', async (t) => {
      const logs: string[] = []
      const app = await builder(t, {}, { logs })
      for (const key of [null, '', 'k1', 'anything']) {
        const res = await post(app, 'u1', { bpm: 72 }, key)
        t.equal(res.statusCode, 401, `key ${JSON.stringify(key)}`)
      }
      const warning = logs.map((l) => JSON.parse(l)).find((l) => String(l.msg).includes('INGEST_API_KEYS'))
      t.ok(warning, 'a log line names INGEST_API_KEYS')
      t.equal(warning?.level, 40, 'at warn level')
    })

    t.test('path userId', async (t) => {
      const app = await make(t)
      for (const bad of ['a:b', '*', 'a%3Ab', '%2A', 'a.b', 'a%20b', '%7Ba%7D', 'x'.repeat(65)]) {
        t.test(`${JSON.stringify(bad.length > 20 ? `${bad.length} chars` : bad)} answers 400 naming userId`, async (t) => {
          const res = await post(app, bad, { bpm: 72 })
          t.equal(res.statusCode, 400)
          t.match(res.json(), { statusCode: 400, message: /userId/ })
        })
      }

      // app.inject resolves dot segments as a URL parser does, so `..` is sent over a real socket,
      // the way a client that does not normalise paths reaches the server.
      t.test('".." answers 400 naming userId', async (t) => {
        const address = await app.listen({ host: '127.0.0.1', port: 0 })
        for (const dots of ['..', '%2E%2E', '.']) {
          const res = await rawPost(address, `/heart/${dots}/readings`, { bpm: 72 })
          t.equal(res.status, 400, dots)
          t.match(JSON.parse(res.body), { statusCode: 400, message: /userId/ }, dots)
        }
      })

      t.test('64 characters are accepted', async (t) => {
        const id = 'A_b-9'.repeat(12) + 'abcd'
        t.equal(id.length, 64)
        const res = await post(app, id, { bpm: 72 })
        t.equal(res.statusCode, 202)
        t.equal((await history(app, id)).length, 1)
      })
    })

    t.test('bodies', async (t) => {
      const app = await make(t)
      let users = 0
      const user = (): string => `body${++users}`

      t.test('one reading without ts is stamped with server time', async (t) => {
        const u = user()
        const before = Date.now()
        const res = await post(app, u, { bpm: 72 })
        const after = Date.now()
        t.equal(res.statusCode, 202)
        const body = res.json()
        t.same(Object.keys(body).sort(), ['accepted', 'duplicates', 'ids'])
        t.equal(body.accepted, 1)
        t.equal(body.duplicates, 0)
        t.equal(body.ids.length, 1)
        t.match(body.ids[0], ID)
        const h = await history(app, u)
        t.equal(h.length, 1)
        t.equal(h[0].id, body.ids[0])
        t.equal(h[0].bpm, 72)
        t.ok(h[0].ts >= before && h[0].ts <= after, `ts ${h[0].ts} within [${before}, ${after}]`)
      })

      t.test('one reading with ts keeps it', async (t) => {
        const u = user()
        const res = await post(app, u, { bpm: 20, ts: T0 })
        t.equal(res.statusCode, 202)
        t.same(await history(app, u), [{ id: res.json().ids[0], bpm: 20, ts: T0 }])
      })

      t.test('bpm 250 and ts exactly 59 s ahead are accepted', async (t) => {
        const u = user()
        const ts = Date.now() + 59_000
        const res = await post(app, u, { bpm: 250, ts })
        t.equal(res.statusCode, 202)
        t.match(await history(app, u), [{ bpm: 250, ts }])
      })

      t.test('a batch of one', async (t) => {
        const u = user()
        const res = await post(app, u, { readings: [{ bpm: 60, ts: T0 }] })
        t.equal(res.statusCode, 202)
        t.equal(res.json().accepted, 1)
        t.match(res.json().ids, [ID])
        t.same(await history(app, u), [{ id: res.json().ids[0], bpm: 60, ts: T0 }])
      })

      t.test('a batch of 500 is stored in order with increasing ids', async (t) => {
        const u = user()
        const batch = readings(500)
        const res = await post(app, u, { readings: batch })
        t.equal(res.statusCode, 202)
        const { accepted, ids } = res.json()
        t.equal(accepted, 500)
        t.equal(ids.length, 500)
        t.ok(ids.every((id: string) => ID.test(id)), 'every id looks like a stream id')
        t.ok(increasing(ids), 'ids strictly increase')
        const h = await history(app, u)
        t.same(h, batch.map((r, i) => ({ id: ids[i], ...r })))
      })

      t.test('a batch reading without ts gets server time', async (t) => {
        const u = user()
        const before = Date.now()
        const res = await post(app, u, { readings: [{ bpm: 61 }, { bpm: 62, ts: T0 }] })
        t.equal(res.statusCode, 202)
        const h = await history(app, u)
        t.equal(h.length, 2)
        t.ok(h[0].ts >= before && h[0].ts <= Date.now())
        t.equal(h[1].ts, T0)
      })

      t.test('a batch of 501 answers 400 and writes nothing', async (t) => {
        const u = user()
        const res = await post(app, u, { readings: readings(501) })
        t.equal(res.statusCode, 400)
        t.match(res.json().message, /readings/)
        t.same(await history(app, u), [])
      })

      t.test('an empty batch answers 400', async (t) => {
        const u = user()
        const res = await post(app, u, { readings: [] })
        t.equal(res.statusCode, 400)
        t.match(res.json().message, /readings/)
        t.same(await history(app, u), [])
      })

      // The clock is read when each test runs, not when the list is made: `ts` ahead of the server is relative to now.
      const badReadings: Array<[string, () => Record<string, unknown>, RegExp]> = [
        ['bpm 19', () => ({ bpm: 19, ts: T0 }), /readings\/3\/bpm/],
        ['bpm 251', () => ({ bpm: 251, ts: T0 }), /readings\/3\/bpm/],
        ['bpm 72.5', () => ({ bpm: 72.5, ts: T0 }), /readings\/3\/bpm/],
        ['bpm as a string', () => ({ bpm: '72', ts: T0 }), /readings\/3\/bpm/],
        ['bpm null', () => ({ bpm: null, ts: T0 }), /readings\/3\/bpm/],
        ['no bpm', () => ({ ts: T0 }), /bpm/],
        ['ts as a string', () => ({ bpm: 72, ts: String(T0) }), /readings\/3\/ts/],
        ['ts negative', () => ({ bpm: 72, ts: -1 }), /readings\/3\/ts/],
        ['ts in seconds', () => ({ bpm: 72, ts: Math.floor(T0 / 1000) }), /readings\/3\/ts/],
        ['ts more than 60 s ahead', () => ({ bpm: 72, ts: Date.now() + 61_000 }), /readings\/3\/ts/],
        ['an unknown field', () => ({ bpm: 72, ts: T0, spo2: 98 }), /spo2/]
      ]
      for (const [what, bad, field] of badReadings) {
        t.test(`a batch with one reading of ${what} answers 400 naming the field and writes nothing`, async (t) => {
          const u = user()
          const batch: unknown[] = readings(6)
          batch[3] = bad()
          const res = await post(app, u, { readings: batch })
          t.equal(res.statusCode, 400)
          t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: field })
          t.same(await history(app, u), [])
          t.equal(await app.heartStore.current(u), null)
        })
      }

      const badSingles: Array<[string, () => unknown, RegExp]> = [
        ['bpm 19', () => ({ bpm: 19 }), /body\/bpm/],
        ['bpm 251', () => ({ bpm: 251 }), /body\/bpm/],
        ['bpm 72.5', () => ({ bpm: 72.5 }), /body\/bpm/],
        ['bpm as a string', () => ({ bpm: '72' }), /body\/bpm/],
        ['bpm null', () => ({ bpm: null }), /body\/bpm/],
        ['ts as a string', () => ({ bpm: 72, ts: String(T0) }), /body\/ts/],
        ['ts negative', () => ({ bpm: 72, ts: -5 }), /body\/ts/],
        ['ts more than 60 s ahead', () => ({ bpm: 72, ts: Date.now() + 120_000 }), /body\/ts/],
        ['an unknown field', () => ({ bpm: 72, device: 'x' }), /body\/device/],
        ['both bpm and readings', () => ({ bpm: 72, readings: [{ bpm: 72 }] }), /bpm.*readings|readings.*bpm/],
        ['neither bpm nor readings', () => ({}), /bpm.*readings|readings.*bpm/],
        ['only ts', () => ({ ts: T0 }), /bpm.*readings|readings.*bpm/],
        ['ts beside a batch', () => ({ ts: T0, readings: [{ bpm: 72 }] }), /body\/ts/],
        ['readings not an array', () => ({ readings: { bpm: 72 } }), /body\/readings/],
        ['a JSON array', () => [{ bpm: 72 }], /body/],
        ['JSON null', () => 'null', /body/]
      ]
      for (const [what, body, field] of badSingles) {
        t.test(`a body with ${what} answers 400 naming the field and writes nothing`, async (t) => {
          const u = user()
          const res = await post(app, u, body())
          t.equal(res.statusCode, 400)
          t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: field })
          t.same(await history(app, u), [])
        })
      }

      t.test('a body that is not JSON answers 400', async (t) => {
        const u = user()
        const res = await post(app, u, '{"bpm":72')
        t.equal(res.statusCode, 400)
        t.match(res.json(), { statusCode: 400 })
        t.same(await history(app, u), [])
      })

      t.test('a body over 64 KiB answers 413', async (t) => {
        const u = user()
        const payload = JSON.stringify({ bpm: 72 }) + ' '.repeat(64 * 1024)
        const res = await post(app, u, payload)
        t.equal(res.statusCode, 413)
        t.match(res.json(), { statusCode: 413 })
        t.same(await history(app, u), [])
      })
    })

    t.test('effects', async (t) => {
      t.test('history gets every reading and current moves to the newest by ts', async (t) => {
        const app = await make(t)
        const frames = await openSocket(app, 'eff1')
        t.teardown(() => frames.ws.terminate())

        t.equal(await app.heartStore.current('eff1'), null)
        t.match(await frames.ask({ type: 'get', userId: 'eff1' }), { type: 'current', userId: 'eff1', bpm: null, ts: null })

        // Newest by ts in the middle of the batch: current takes it, not the last one posted.
        const res = await post(app, 'eff1', { readings: [{ bpm: 70, ts: T0 }, { bpm: 90, ts: T0 + 2000 }, { bpm: 80, ts: T0 + 1000 }] })
        t.equal(res.statusCode, 202)
        t.same(await app.heartStore.current('eff1'), { bpm: 90, ts: T0 + 2000 })
        t.same(await frames.ask({ type: 'get', userId: 'eff1' }), { type: 'current', userId: 'eff1', bpm: 90, ts: T0 + 2000 })

        t.equal((await post(app, 'eff1', { bpm: 100, ts: T0 + 3000 })).statusCode, 202)
        t.same(await app.heartStore.current('eff1'), { bpm: 100, ts: T0 + 3000 })
        t.same(await frames.ask({ type: 'get', userId: 'eff1' }), { type: 'current', userId: 'eff1', bpm: 100, ts: T0 + 3000 })

        t.same((await history(app, 'eff1')).map((r) => [r.bpm, r.ts]), [[70, T0], [90, T0 + 2000], [80, T0 + 1000], [100, T0 + 3000]])
      })

      t.test('an older reading posted later is kept in history but does not replace current', async (t) => {
        const app = await make(t)
        t.equal((await post(app, 'eff2', { bpm: 75, ts: T0 + 5000 })).statusCode, 202)
        t.equal((await post(app, 'eff2', { bpm: 140, ts: T0 })).statusCode, 202)
        t.same(await app.heartStore.current('eff2'), { bpm: 75, ts: T0 + 5000 })
        const frames = await openSocket(app, 'eff2')
        t.teardown(() => frames.ws.terminate())
        t.same(await frames.ask({ type: 'get', userId: 'eff2' }), { type: 'current', userId: 'eff2', bpm: 75, ts: T0 + 5000 })
        t.same((await history(app, 'eff2')).map((r) => r.bpm), [75, 140])
      })

      t.test('a batch without ts (one server time for all) leaves current at its last reading, the one history lists last', async (t) => {
        const app = await make(t)
        const res = await post(app, 'eff3', { readings: [{ bpm: 70 }, { bpm: 71 }] })
        t.equal(res.statusCode, 202)
        const h = await history(app, 'eff3')
        t.same(h.map((r) => r.bpm), [70, 71])
        t.equal(h[0].ts, h[1].ts, 'both stamped with the same server time')
        t.same(await app.heartStore.current('eff3'), { bpm: 71, ts: h[1].ts })
        const frames = await openSocket(app, 'eff3')
        t.teardown(() => frames.ws.terminate())
        t.same(await frames.ask({ type: 'get', userId: 'eff3' }), { type: 'current', userId: 'eff3', bpm: 71, ts: h[1].ts })
        frames.ws.send('eff3')
        t.equal(await frames.next(), '71', 'the legacy frame agrees')
      })

      t.test('HISTORY_MAX caps the history', async (t) => {
        const app = await make(t, { HISTORY_MAX: '100' })
        let last: string[] = []
        for (let i = 0; i < 10; i++) {
          const res = await post(app, 'cap', { readings: readings(100, T0 + i * 100_000) })
          t.equal(res.statusCode, 202)
          last = res.json().ids
        }
        const h = await history(app, 'cap')
        t.equal(h.length, 100)
        if (store === 'Redis') {
          const redis = await rawClient(t)
          const k = `{${app.config.HEART_KEY_PREFIX}cap}`
          t.equal(await redis.xlen(`${k}:history`), 100, 'the stream holds exactly HISTORY_MAX')
          t.equal(await redis.hlen(`${k}:ids-by-ts`), 100, 'and the duplicate check as many, trimmed with it')
        }
        t.same(h.map((r) => r.id), last, 'the newest readings are the ones kept')
      })
    })

    t.test('resends', async (t) => {
      const app = await make(t)

      t.test('a reading sent again with its ts answers 202 with the stored id, stores nothing and pushes nothing', async (t) => {
        const frames = await openSocket(app, 'dup1')
        t.teardown(() => frames.ws.terminate())
        t.match(await frames.ask({ type: 'subscribe', userId: 'dup1' }), { type: 'subscribed' })
        const first = await post(app, 'dup1', { bpm: 72, ts: T0 })
        t.equal(first.statusCode, 202)
        t.same(first.json(), { accepted: 1, duplicates: 0, ids: first.json().ids })
        const again = await post(app, 'dup1', { bpm: 72, ts: T0 })
        t.equal(again.statusCode, 202)
        t.same(again.json(), { accepted: 0, duplicates: 1, ids: first.json().ids })
        t.same(await history(app, 'dup1'), [{ id: first.json().ids[0], bpm: 72, ts: T0 }])
        t.match(await frames.json(), { type: 'reading', id: first.json().ids[0] })
        // A new reading after the resend: it is the next frame, so the resend pushed nothing.
        const next = await post(app, 'dup1', { bpm: 73, ts: T0 + 1000 })
        t.match(await frames.json(), { type: 'reading', id: next.json().ids[0], bpm: 73 })
      })

      t.test('a batch resent with new readings in it: one id per reading in order, only the new ones stored', async (t) => {
        const first = await post(app, 'dup2', { readings: [{ bpm: 60, ts: T0 }, { bpm: 61, ts: T0 + 1000 }] })
        const [a, b] = first.json().ids
        const res = await post(app, 'dup2', { readings: [{ bpm: 61, ts: T0 + 1000 }, { bpm: 62, ts: T0 + 2000 }, { bpm: 60, ts: T0 }, { bpm: 63 }] })
        t.equal(res.statusCode, 202)
        const body = res.json()
        t.match(body, { accepted: 2, duplicates: 2 })
        t.same([body.ids[0], body.ids[2]], [b, a])
        t.same((await history(app, 'dup2')).map((r) => r.id), [a, b, body.ids[1], body.ids[3]])
      })

      t.test('readings without ts are never duplicates', async (t) => {
        const one = await post(app, 'dup3', { bpm: 70 })
        const two = await post(app, 'dup3', { bpm: 70 })
        t.match(two.json(), { accepted: 1, duplicates: 0 })
        t.not(two.json().ids[0], one.json().ids[0])
        t.equal((await history(app, 'dup3')).length, 2)
      })

      t.test('a resent reading older than the current value changes nothing; a new older one is stored but is not current', async (t) => {
        await post(app, 'dup4', { bpm: 90, ts: T0 + 5000 })
        t.match((await post(app, 'dup4', { bpm: 90, ts: T0 + 5000 })).json(), { accepted: 0, duplicates: 1 })
        t.match((await post(app, 'dup4', { bpm: 80, ts: T0 })).json(), { accepted: 1, duplicates: 0 })
        t.same(await app.heartStore.current('dup4'), { bpm: 90, ts: T0 + 5000 })
        t.same((await history(app, 'dup4')).map((r) => r.bpm), [90, 80])
      })
    })

    // What follows is about Redis itself: its key layout, and what happens when it fails.
    if (store !== 'Redis') return

    t.test('Redis layout', async (t) => {
      t.test('the legacy key holds the decimal bpm and the ts key <ts>:<bpm>', async (t) => {
        const app = await make(t)
        const redis = await rawClient(t)
        const prefix = app.config.HEART_KEY_PREFIX
        t.ok(prefix.length > 0)
        t.equal((await post(app, 'lay1', { bpm: 88, ts: T0 + 1000 })).statusCode, 202)
        t.equal(await redis.get(`${prefix}lay1`), '88')
        t.equal(await redis.get(`{${prefix}lay1}:ts`), `${T0 + 1000}:88`)
        t.equal((await post(app, 'lay1', { bpm: 99, ts: T0 })).statusCode, 202)
        t.equal(await redis.get(`${prefix}lay1`), '88', 'an older reading leaves the legacy key alone')
        t.equal(await redis.get(`{${prefix}lay1}:ts`), `${T0 + 1000}:88`)
        t.equal(await redis.xlen(`{${prefix}lay1}:history`), 2)
      })

      t.test('with an empty HEART_KEY_PREFIX the legacy key is the user id itself', async (t) => {
        const app = await make(t, { HEART_KEY_PREFIX: '' })
        const redis = await rawClient(t)
        const u = `legacy${process.pid}x${Date.now()}`
        t.teardown(async () => { await redis.del(u, `{${u}}:ts`, `{${u}}:history`) })
        t.equal((await post(app, u, { bpm: 66 })).statusCode, 202)
        t.equal(await redis.get(u), '66')
        t.match(await redis.get(`{${u}}:ts`), /^\d+:66$/)
        t.equal(await redis.xlen(`{${u}}:history`), 1)
      })

      t.test('a value set by an original writer is replaced by any ingested reading', async (t) => {
        const app = await make(t)
        const redis = await rawClient(t)
        const prefix = app.config.HEART_KEY_PREFIX
        await redis.set(`${prefix}lay2`, '77')
        t.same(await app.heartStore.current('lay2'), { bpm: 77, ts: null })
        t.equal((await post(app, 'lay2', { bpm: 64, ts: T0 })).statusCode, 202)
        t.equal(await redis.get(`${prefix}lay2`), '64')
        t.same(await app.heartStore.current('lay2'), { bpm: 64, ts: T0 })
      })
    })

    t.test('atomicity', async (t) => {
      t.test('while Redis is down ingest answers 503, and once it is back nothing of that request is there', async (t) => {
        // Append-only file synced on every write, so what was stored before the crash survives it
        // and the test can tell "nothing written" from "everything lost".
        const dir = await mkdtemp(join(tmpdir(), 'heart-ingest-'))
        t.teardown(() => rm(dir, { recursive: true, force: true }))
        const server = await RedisServer.start(['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir])
        t.teardown(() => server.stop())
        const app = await make(t, { REDIS_URL: server.url })
        const prefix = app.config.HEART_KEY_PREFIX
        const stored = await post(app, 'down', { bpm: 70, ts: T0 })
        t.equal(stored.statusCode, 202)

        await server.stop()
        const res = await post(app, 'down', { readings: [{ bpm: 71, ts: T0 + 1000 }, { bpm: 72, ts: T0 + 2000 }] })
        t.equal(res.statusCode, 503)
        t.match(res.headers['content-type'], /application\/json/)
        t.match(res.json(), { statusCode: 503, error: 'Service Unavailable', message: String })

        await server.start()
        t.ok(await eventually(async () => (await app.inject('/health')).statusCode === 200, 10_000, 100), 'health is 200 again within 10 s')
        const redis = await rawClient(t, server)
        t.same(await history(app, 'down'), [{ id: stored.json().ids[0], bpm: 70, ts: T0 }], 'history is what it was before the outage')
        t.equal(await redis.get(`${prefix}down`), '70')
        t.equal(await redis.get(`{${prefix}down}:ts`), `${T0}:70`)

        // The restarted Redis has forgotten the ingest script: the store must load it again.
        const again = await post(app, 'down', { bpm: 73, ts: T0 + 3000 })
        t.equal(again.statusCode, 202)
        t.same((await history(app, 'down')).map((r) => r.bpm), [70, 73])
        t.equal(await redis.get(`${prefix}down`), '73')
      })

      const wrongTypes: Array<[string, (redis: Redis, keys: { current: string, meta: string, history: string, idsByTs: string }) => Promise<unknown>]> = [
        ['the ts key is a hash', async (r, k) => { await r.del(k.meta); await r.hset(k.meta, 'x', '1') }],
        ['the duplicate check is a string', async (r, k) => { await r.del(k.idsByTs); await r.set(k.idsByTs, 'junk') }],
        ['the history is a string', async (r, k) => { await r.del(k.history); await r.set(k.history, 'junk') }],
        ['the legacy key is a list', async (r, k) => { await r.del(k.current); await r.rpush(k.current, '80') }]
      ]
      for (const [what, corrupt] of wrongTypes) {
        t.test(`when ${what} ingest answers 503 and writes nothing`, async (t) => {
          const app = await make(t)
          const redis = await rawClient(t)
          const prefix = app.config.HEART_KEY_PREFIX
          const k = { current: `${prefix}wt`, meta: `{${prefix}wt}:ts`, history: `{${prefix}wt}:history`, idsByTs: `{${prefix}wt}:ids-by-ts` }
          t.equal((await post(app, 'wt', { bpm: 70, ts: T0 })).statusCode, 202)
          await corrupt(redis, k)
          const dump = async (): Promise<unknown> => await Promise.all([k.current, k.meta, k.history, k.idsByTs].map(async (key) => {
            const type = await redis.type(key)
            if (type === 'string') return [type, await redis.get(key)]
            if (type === 'hash') return [type, await redis.hgetall(key)]
            if (type === 'list') return [type, await redis.lrange(key, 0, -1)]
            if (type === 'stream') return [type, await redis.xrange(key, '-', '+')]
            return [type]
          }))
          const before = await dump()

          const res = await post(app, 'wt', { readings: [{ bpm: 90, ts: T0 + 1000 }, { bpm: 91, ts: T0 + 2000 }] })
          t.equal(res.statusCode, 503)
          t.match(res.json(), { statusCode: 503, error: 'Service Unavailable' })
          t.same(await dump(), before, 'every key of the user is unchanged')
        })
      }

      t.test('when Redis is out of memory ingest answers 503 and writes nothing', async (t) => {
        const server = await RedisServer.start(['--maxmemory-policy', 'noeviction'])
        t.teardown(() => server.stop())
        const app = await make(t, { REDIS_URL: server.url })
        const redis = await rawClient(t, server)
        const prefix = app.config.HEART_KEY_PREFIX
        t.equal((await post(app, 'oom', { bpm: 70, ts: T0 })).statusCode, 202)
        await redis.config('SET', 'maxmemory', '1')
        const res = await post(app, 'oom', { readings: [{ bpm: 90, ts: T0 + 1000 }, { bpm: 91, ts: T0 + 2000 }] })
        t.equal(res.statusCode, 503)
        await redis.config('SET', 'maxmemory', '0')
        t.equal(await redis.xlen(`{${prefix}oom}:history`), 1)
        t.equal(await redis.get(`${prefix}oom`), '70')
        t.equal(await redis.get(`{${prefix}oom}:ts`), `${T0}:70`)
        t.equal((await post(app, 'oom', { bpm: 92, ts: T0 + 3000 })).statusCode, 202, 'ingest works again once memory is available')
      })

      t.test('two instances receiving the same readings at the same instant store each once', async (t) => {
        const a = await make(t)
        const b = await make(t, { HEART_KEY_PREFIX: a.config.HEART_KEY_PREFIX })
        const frames = await openSocket(b, 'twin')
        t.teardown(() => frames.ws.terminate())
        t.match(await frames.ask({ type: 'subscribe', userId: 'twin' }), { type: 'subscribed' })
        const ids: string[] = []
        for (let i = 0; i < 50; i++) {
          const body = { readings: [{ bpm: 60 + i, ts: T0 + i * 1000 }] }
          const [ra, rb] = await Promise.all([post(a, 'twin', body), post(b, 'twin', body)])
          t.equal(ra.statusCode, 202)
          t.equal(rb.statusCode, 202)
          const [ja, jb] = [ra.json(), rb.json()]
          t.same(ja.ids, jb.ids, `round ${i}: both answer the same id`)
          t.equal(ja.accepted + jb.accepted, 1, `round ${i}: one of them stored it`)
          t.equal(ja.duplicates + jb.duplicates, 1, `round ${i}: the other found it stored`)
          ids.push(ja.ids[0])
        }
        t.same((await history(a, 'twin')).map((r) => r.id), ids, 'history holds each reading once')
        const pushed: string[] = []
        while (pushed.length < ids.length) pushed.push((await frames.json()).id)
        t.same(pushed, ids, 'each pushed once')
        // A marker after the last round: it is the next frame, so no round pushed a second copy.
        const marker = (await post(a, 'twin', { bpm: 200, ts: T0 + 999_000 })).json().ids[0]
        t.match(await frames.json(), { type: 'reading', id: marker })
      })

      t.test('every reading that got 202 is in history, in order', async (t) => {
        const app = await make(t)
        const ids: string[] = []
        for (let i = 0; i < 50; i++) {
          const res = await post(app, 'all', { bpm: 60 + i, ts: T0 + i })
          t.equal(res.statusCode, 202)
          ids.push(...res.json().ids)
        }
        t.ok(increasing(ids))
        const h = await history(app, 'all')
        t.same(h.map((r) => r.id), ids)
        t.same(h.map((r) => r.bpm), ids.map((_, i) => 60 + i))
      })
    })
  })
}
