/**
 * publish() of the mini-program client (client/heart-client.js) against the real compiled
 * server: readings published during an outage wait in the bounded queue and go out in order on
 * reconnect, a publish whose answer was lost with its socket is sent again and stored once, and
 * every reading ends up in history exactly once.
 */
import t from 'tap'
import type { HeartClient as HeartClientType } from '../client/heart-client.js'
import { bearer, eventually, sharedRedis, startServer, token, uniquePrefix, within } from './helper.js'
import { WxShim } from './wx-shim.js'
import { loadClient } from './client-loader.js'

const { HeartClient } = loadClient()

const server = await startServer(t, { REDIS_URL: (await sharedRedis()).url, HEART_KEY_PREFIX: uniquePrefix() })

async function history (userId: string): Promise<Array<{ id: string, bpm: number, ts: number }>> {
  const res = await fetch(`${server.url}/heart/${userId}/readings`, { headers: bearer(userId) })
  return (await res.json() as { readings: Array<{ id: string, bpm: number, ts: number }> }).readings
}

t.test('publish: a lost answer is resent and stored once; during an outage readings queue (oldest dropped past the limit) and go out in order on reconnect', async (t) => {
  const u = 'pub-wearer'
  const shim = new WxShim()
  const client: HeartClientType = new HeartClient({
    wx: shim,
    url: `ws://127.0.0.1:${server.port}/heart/current`,
    token: token(u),
    backoff: { initialMs: 50, maxMs: 300 },
    publishQueueMax: 3
  })
  t.teardown(() => { client.close(); shim.destroy() })
  await t.rejects(client.publish({ bpm: 70 }), { code: 'not_connected' }, 'publish before connect() fails at once')
  client.connect()
  t.ok(await eventually(() => client.state === 'open'))

  const first = await within(client.publish({ bpm: 70 }), 5000, 'publish')
  t.match(first, { ids: [String], duplicates: 0 })

  // The answer is lost: the server stores the reading, its reply stays unread, the socket dies.
  const lost = client.publish([{ bpm: 71 }])
  // The frame went out synchronously; from now on nothing comes in.
  shim.last.stall()
  t.ok(await eventually(async () => (await history(u)).length === 2, 5000, 50), 'the server stored it')
  const stored = (await history(u))[1]
  shim.last.drop()
  t.same(await within(lost, 5000, 'resent publish'), { ids: [stored.id], duplicates: 1 }, 'sent again on the next socket: a duplicate, with the stored id')

  // An outage: three publishes wait; the limit of 3 drops the oldest reading.
  shim.networkDown()
  t.ok(await eventually(() => client.state === 'reconnecting'))
  const ts = Date.now() - 1000
  const a = client.publish([{ bpm: 72, ts }, { bpm: 73, ts: ts + 1 }])
  const b = client.publish({ bpm: 74 })
  const c = client.publish({ bpm: 75 })
  t.equal(client.droppedReadings, 1, 'the oldest reading was dropped and counted')
  shim.networkUp()
  const [ra, rb, rc] = await within(Promise.all([a, b, c]), 8000, 'queued publishes')
  t.match([ra, rb, rc], [{ ids: [String], duplicates: 0 }, { ids: [String], duplicates: 0 }, { ids: [String], duplicates: 0 }])

  const all = await history(u)
  t.same(all.map((r) => r.bpm), [70, 71, 73, 74, 75], 'each reading stored once, in order, the dropped one not at all')
  t.equal(all[2].ts, ts + 1, 'a given ts is kept')
  t.same(all.slice(2).map((r) => r.id), [ra.ids[0], rb.ids[0], rc.ids[0]])
  t.ok(all[3].ts > ts + 1 && all[3].ts <= Date.now(), 'a reading without ts got the time of publish()')
})

t.test('publish: a queue dropped to nothing rejects with dropped; close() rejects what waits', async (t) => {
  const shim = new WxShim()
  const client: HeartClientType = new HeartClient({ wx: shim, url: `ws://127.0.0.1:${server.port}/heart/current`, token: token('pub-queue'), publishQueueMax: 1 })
  t.teardown(() => { client.close(); shim.destroy() })
  shim.networkDown()
  client.connect()
  const older = client.publish({ bpm: 60 })
  const newer = client.publish({ bpm: 61 })
  await t.rejects(older, { code: 'dropped' })
  client.close()
  await t.rejects(newer, { code: 'closed' })
  await t.rejects(client.publish([]), { name: 'TypeError' })
})
