import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Env } from '../plugins/config.js'
import { bearer, build, buildWithRedis, sharedRedis, token } from './helper.js'

const KEY = 'k1'
/** A fixed past time, so expected readings do not depend on the clock. */
const T0 = 1_764_115_200_000

const builders = [
  { store: 'the embedded store', build },
  { store: 'Redis', build: buildWithRedis }
] as const

interface Reading { id: string, bpm: number, ts: number }

/** Posts `n` readings in batches of up to 500; returns them as history should hold them. */
async function ingest (app: FastifyInstance, userId: string, n: number): Promise<Reading[]> {
  const all: Reading[] = []
  for (let start = 0; start < n; start += 500) {
    const batch = Array.from({ length: Math.min(500, n - start) }, (_, i) => ({ bpm: 20 + ((start + i) % 231), ts: T0 + (start + i) * 1000 }))
    const res = await app.inject({ method: 'POST', url: `/heart/${userId}/readings`, headers: { 'x-api-key': KEY }, payload: { readings: batch } })
    if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`)
    const ids: string[] = res.json().ids
    all.push(...batch.map((r, i) => ({ id: ids[i], ...r })))
  }
  return all
}

async function get (app: FastifyInstance, userId: string, query = '', viewer = userId) {
  return await app.inject({ url: `/heart/${userId}/readings${query}`, headers: bearer(viewer) })
}

for (const { store, build: builder } of builders) {
  const make = async (t: Test, env: Env = {}): Promise<FastifyInstance> =>
    await builder(t, { INGEST_API_KEYS: KEY, ...env })

  t.test(`history on ${store}`, async (t) => {
    const app = await make(t)
    const h150 = await ingest(app, 'h150', 150)
    const h250 = await ingest(app, 'h250', 250)
    const h1200 = await ingest(app, 'h1200', 1200)

    t.test('authorization', async (t) => {
      t.test('without a token answers 401', async (t) => {
        const res = await app.inject({ url: '/heart/h150/readings' })
        t.equal(res.statusCode, 401)
        t.match(res.json(), { statusCode: 401, error: 'Unauthorized' })
      })

      const badTokens: Array<[string, string]> = [
        ['a token signed with another secret', `Bearer ${token('h150', { secret: 'another-secret-of-at-least-32-characters' })}`],
        ['an expired token', `Bearer ${token('h150', { ttlS: -60 })}`],
        ['a malformed Authorization header', `Token ${token('h150')}`],
        ['garbage', 'Bearer not.a.jwt']
      ]
      for (const [what, authorization] of badTokens) {
        t.test(`with ${what} answers 401`, async (t) => {
          const res = await app.inject({ url: '/heart/h150/readings', headers: { authorization } })
          t.equal(res.statusCode, 401)
          t.match(res.json(), { statusCode: 401 })
          t.notMatch(res.body, /"readings"/)
        })
      }

      t.test('an API key is no substitute for a token', async (t) => {
        const res = await app.inject({ url: '/heart/h150/readings', headers: { 'x-api-key': KEY } })
        t.equal(res.statusCode, 401)
      })

      t.test("reading another user's history answers 403", async (t) => {
        const res = await get(app, 'h150', '', 'someone-else')
        t.equal(res.statusCode, 403)
        t.match(res.json(), { statusCode: 403, error: 'Forbidden' })
        t.notMatch(res.body, /"readings"/)
      })

      t.test('an invalid userId in the path answers 400 naming userId', async (t) => {
        const res = await app.inject({ url: '/heart/a:b/readings', headers: bearer('a') })
        t.equal(res.statusCode, 400)
        t.match(res.json().message, /userId/)
      })
    })

    t.test('without since', async (t) => {
      t.test('answers the newest 100 readings, oldest first', async (t) => {
        const res = await get(app, 'h150')
        t.equal(res.statusCode, 200)
        const body = res.json()
        t.same(Object.keys(body).sort(), ['readings', 'userId'])
        t.equal(body.userId, 'h150')
        t.same(body.readings, h150.slice(-100))
      })

      t.test('answers the newest `limit` readings, oldest first', async (t) => {
        t.same((await get(app, 'h150', '?limit=7')).json().readings, h150.slice(-7))
        t.same((await get(app, 'h150', '?limit=1')).json().readings, h150.slice(-1))
        t.same((await get(app, 'h150', '?limit=150')).json().readings, h150)
        t.same((await get(app, 'h150', '?limit=1000')).json().readings, h150, 'a limit above the count answers everything')
      })

      t.test('a limit of 1000 answers 1000 readings', async (t) => {
        const res = await get(app, 'h1200', '?limit=1000')
        t.equal(res.statusCode, 200)
        t.same(res.json().readings, h1200.slice(-1000))
      })

      t.test('each reading has exactly id, bpm and ts', async (t) => {
        for (const r of (await get(app, 'h150', '?limit=3')).json().readings) t.same(Object.keys(r).sort(), ['bpm', 'id', 'ts'])
      })
    })

    t.test('limit', async (t) => {
      for (const bad of ['1001', '0', '-1', 'abc', '1.5', '']) {
        t.test(`limit=${bad} answers 400 naming limit`, async (t) => {
          const res = await get(app, 'h150', `?limit=${bad}`)
          t.equal(res.statusCode, 400)
          t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /limit/ })
        })
      }
    })

    t.test('with since', async (t) => {
      t.test('answers readings strictly after it, the first `limit`, oldest first', async (t) => {
        const since = h150[9].id
        t.same((await get(app, 'h150', `?since=${since}&limit=5`)).json().readings, h150.slice(10, 15))
        t.same((await get(app, 'h150', `?since=${since}`)).json().readings, h150.slice(10, 110), 'limit defaults to 100')
        t.same((await get(app, 'h150', `?since=${h150[148].id}`)).json().readings, h150.slice(149))
      })

      t.test('since the newest reading answers nothing', async (t) => {
        const res = await get(app, 'h150', `?since=${h150[149].id}`)
        t.equal(res.statusCode, 200)
        t.same(res.json(), { userId: 'h150', readings: [] })
      })

      t.test('an id between stored ids starts after it', async (t) => {
        // One below an existing id: that reading is included.
        const [ms, seq] = h150[20].id.split('-').map(BigInt)
        const before = seq > 0n ? `${ms}-${seq - 1n}` : `${ms - 1n}-18446744073709551615`
        t.same((await get(app, 'h150', `?since=${before}&limit=2`)).json().readings, h150.slice(20, 22))
      })

      t.test('since=0-0 answers from the oldest reading', async (t) => {
        const res = await get(app, 'h150', '?since=0-0&limit=3')
        t.same(res.json(), { userId: 'h150', readings: h150.slice(0, 3) })
      })

      t.test('paging with since = the last id returns every reading exactly once, in order', async (t) => {
        const seen: Reading[] = []
        let since = '0-0'
        for (let page = 0; page < 10; page++) {
          const res = await get(app, 'h250', `?since=${since}&limit=100`)
          t.equal(res.statusCode, 200)
          const { readings } = res.json()
          if (readings.length === 0) break
          t.ok(readings.length <= 100)
          seen.push(...readings)
          since = readings.at(-1).id
        }
        t.equal(seen.length, 250)
        t.same(seen, h250)
      })

      for (const bad of ['abc', '1-2-3', '1', '-1', '1-', '-', '1.5-0', '0x1-0', '']) {
        t.test(`since=${JSON.stringify(bad)} answers 400 naming since`, async (t) => {
          const res = await get(app, 'h150', `?since=${encodeURIComponent(bad)}`)
          t.equal(res.statusCode, 400)
          t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /since/ })
        })
      }

      t.test('an id beyond what ids can be answers 400, not a store failure', async (t) => {
        for (const since of ['99999999999999999999-0', '18446744073709551616-0', '0-18446744073709551616']) {
          const res = await get(app, 'h150', `?since=${since}`)
          t.equal(res.statusCode, 400, since)
          t.match(res.json(), { message: /since/ }, since)
        }
      })

      t.test('the largest id there is answers nothing', async (t) => {
        const res = await get(app, 'h150', '?since=18446744073709551615-18446744073709551615')
        t.equal(res.statusCode, 200)
        t.same(res.json(), { userId: 'h150', readings: [] })
      })
    })

    t.test('an unknown user has an empty history', async (t) => {
      for (const query of ['', '?limit=5', '?since=0-0', `?since=${h150[0].id}`]) {
        const res = await get(app, 'nobody', query)
        t.equal(res.statusCode, 200, query)
        t.same(res.json(), { userId: 'nobody', readings: [] }, query)
      }
    })
  })

  t.test(`a since older than what HISTORY_MAX kept answers truncated on ${store}`, async (t) => {
    const app = await make(t, { HISTORY_MAX: '10' })
    const all = await ingest(app, 'trim', 1000)
    const kept: Reading[] = (await get(app, 'trim', '?limit=1000')).json().readings
    t.equal(kept.length, 10)
    if (store === 'Redis') {
      const redis = (await sharedRedis()).client()
      t.teardown(() => { redis.disconnect() })
      t.equal(await redis.xlen(`{${app.config.HEART_KEY_PREFIX}trim}:history`), 10)
    }
    t.same(kept, all.slice(-kept.length), 'the newest readings are the ones kept')

    const truncated = await get(app, 'trim', '?since=0-1&limit=5')
    t.equal(truncated.statusCode, 200)
    t.same(truncated.json(), { userId: 'trim', readings: kept.slice(0, 5), truncated: true })

    const firstTrimmed = all[all.length - kept.length - 1]
    t.same((await get(app, 'trim', `?since=${all[0].id}&limit=2`)).json(), { userId: 'trim', readings: kept.slice(0, 2), truncated: true }, 'since the oldest reading, which was trimmed')
    const boundary = (await get(app, 'trim', `?since=${firstTrimmed.id}&limit=2`)).json()
    t.same(boundary.readings, kept.slice(0, 2), 'since the newest trimmed reading: the oldest kept ones follow')
    if (store === 'Redis') {
      // Redis does not record which ids trimming removed, so this one case is reported truncated
      // although nothing is missing (documented in src/heart/redis-scripts.ts): erring that way is safe.
      t.equal(boundary.truncated, true)
    } else {
      t.equal(boundary.truncated, undefined, 'the embedded store knows nothing is missing')
    }
    t.same((await get(app, 'trim', `?since=${kept[0].id}&limit=2`)).json(), { userId: 'trim', readings: kept.slice(1, 3) }, 'since a kept reading')
    t.same((await get(app, 'trim', '?limit=3')).json(), { userId: 'trim', readings: kept.slice(-3) }, 'without since there is no truncated flag')
  })
}

t.test('HISTORY_RATE_LIMIT counts history requests per requesting user: past it 429 with Retry-After', async (t) => {
  t.test('at the default, 60 requests a minute pass and the 61st is refused', async (t) => {
    const app = await build(t, { HISTORY_RATE_LIMIT: undefined })
    for (let i = 0; i < 60; i++) {
      const res = await get(app, 'r1')
      if (res.statusCode !== 200) t.fail(`request ${i + 1} answered ${res.statusCode}`)
    }
    const refused = await get(app, 'r1')
    t.equal(refused.statusCode, 429)
    t.match(refused.headers['content-type'], /^application\/json/)
    t.match(refused.json(), { statusCode: 429, error: 'Too Many Requests', message: /rate limit exceeded: at most 60 per window/ })
    t.ok(Number(refused.headers['retry-after']) > 0, `retry-after: ${refused.headers['retry-after']}`)
  })

  t.test('the count is the user\'s, whatever the address; refusals for another user\'s history count too', async (t) => {
    const app = await build(t, { HISTORY_RATE_LIMIT: '3' })
    t.equal((await get(app, 'r1')).statusCode, 200)
    t.equal((await get(app, 'r1', '?limit=5')).statusCode, 200)
    t.equal((await get(app, 'r2', '', 'r1')).statusCode, 403, 'not granted: counted all the same')
    t.equal((await get(app, 'r1')).statusCode, 429, 'the fourth request of r1')
    t.equal((await get(app, 'r2', '', 'r1')).statusCode, 429, 'whichever history r1 asks for')
    t.equal((await get(app, 'r2')).statusCode, 200, 'r2, from the same address, has its own count')
    t.equal((await app.inject({ url: '/heart/r1/readings' })).statusCode, 401, 'without a token: 401, not counted against anyone')
  })
})
