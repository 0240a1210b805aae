/**
 * onStatus and onAlert of the mini-program client (client/heart-client.js) against the real
 * compiled server: presence and alert episodes live, and those that changed while the app was in
 * the background handed over on resubscribe, each transition once.
 */
import t from 'tap'
import type { Alert, HeartClient as HeartClientType, Status } from '../client/heart-client.js'
import { bearer, eventually, openWebSocket, postReading, sharedRedis, startServer, token, uniquePrefix, within, type ServerProcess } from './helper.js'
import { WxShim } from './wx-shim.js'
import { loadClient } from './client-loader.js'

const KEY = 'client-alerts-key'
const { HeartClient } = loadClient()

const server = await startServer(t, { REDIS_URL: (await sharedRedis()).url, HEART_KEY_PREFIX: uniquePrefix(), INGEST_API_KEYS: KEY, OFFLINE_AFTER_MS: '1000' })

async function post (s: ServerProcess, userId: string, bpm: number): Promise<void> {
  const r = await postReading(s, KEY, userId, bpm, 3000)
  if (r.status !== 202) throw new Error(`ingest answered ${r.status}`)
}

async function setRules (s: ServerProcess, userId: string, rules: object): Promise<void> {
  const res = await fetch(`${s.url}/heart/${userId}/alert-rules`, { method: 'PUT', headers: { ...bearer(userId), 'content-type': 'application/json' }, body: JSON.stringify(rules) })
  if (res.status !== 200) throw new Error(`alert-rules answered ${res.status}`)
}

/** The subscribe frames the client sent on its socket `index`. */
function subscribes (shim: WxShim, index: number): number {
  return shim.tasks[index].sent.filter((s) => JSON.parse(s).type === 'subscribe').length
}

t.test('onStatus and onAlert: live transitions, those of the time in the background on resubscribe, each once', async (t) => {
  const u = 'alert-wearer'
  await setRules(server, u, { high: 120, offline: true })
  const statuses: Status[] = []
  const alerts: Alert[] = []
  let resubscribed = 0
  const shim = new WxShim()
  const client: HeartClientType = new HeartClient({
    wx: shim,
    url: `ws://127.0.0.1:${server.port}/heart/current`,
    token: token('alert-viewer'),
    backoff: { initialMs: 50, maxMs: 300 },
    onStatus: (s) => statuses.push(s),
    onAlert: (a) => alerts.push(a),
    onResubscribed: () => { resubscribed++ }
  })
  t.teardown(() => { client.close(); shim.destroy() })
  // The owner shares with the viewer, who watches from the mini program.
  t.equal((await fetch(`${server.url}/shares/alert-viewer`, { method: 'PUT', headers: bearer(u) })).status, 200)
  client.connect()
  await within(client.subscribe(u, () => {}), 5000, 'subscribe')
  t.same(statuses, [{ userId: u, state: 'offline', lastTs: null }], 'subscribed tells a user who never sent a reading is offline')

  await post(server, u, 72)
  t.ok(await eventually(() => statuses.length === 2), 'a status frame')
  t.match(statuses[1], { userId: u, state: 'online', lastTs: Number })
  await post(server, u, 150)
  t.ok(await eventually(() => alerts.length === 1), 'an alert frame')
  const high = alerts[0]
  t.match(high, { userId: u, alertId: String, kind: 'high', state: 'open', bpm: 150, ts: Number, openedAt: Number })
  t.notOk('closedAt' in high)

  // In the background: the high episode closes, the wearer goes offline, an offline episode opens
  // (seen by the owner's own socket: offline is judged for users someone watches).
  const owner = await openWebSocket(t, `ws://127.0.0.1:${server.port}/heart/current`, { headers: { authorization: `Bearer ${token(u)}` } })
  await owner.ask({ type: 'subscribe', userId: u })
  shim.hide()
  await post(server, u, 100)
  const lastTs = Date.now()
  t.match(await owner.until((f) => f.type === 'alert' && f.kind === 'offline', 5000), { state: 'open' }, 'the offline episode opened while the app was hidden')
  t.equal(alerts.length, 1, 'nothing reported while hidden')
  shim.show()
  t.ok(await eventually(() => alerts.length === 3 && statuses.length === 3), 'the resubscription reports what changed')
  t.same(alerts[1], { ...high, state: 'closed', closedAt: null }, 'the high episode that closed meanwhile, closedAt unknown')
  t.match(alerts[2], { userId: u, kind: 'offline', state: 'open', alertId: String })
  t.match(statuses[2], { userId: u, state: 'offline' })
  t.ok(statuses[2].lastTs !== null && statuses[2].lastTs <= lastTs, 'lastTs is the last reading')

  // A reconnect with nothing changed reports nothing again: the open offline alert is in subscribed.
  const before = resubscribed
  shim.last.drop()
  // onStatus/onAlert run right after onResubscribed, with the same subscribed frame.
  t.ok(await eventually(() => resubscribed === before + 1), 'resubscribed after the drop')
  t.equal(subscribes(shim, shim.tasks.length - 1), 1)
  t.equal(alerts.length, 3, 'the open offline alert is not reported twice')
  t.equal(statuses.length, 3, 'nor the status')

  await post(server, u, 80)
  t.ok(await eventually(() => alerts.length === 4 && statuses.length === 4), 'readings resume')
  t.match(alerts[3], { alertId: alerts[2].alertId, kind: 'offline', state: 'closed', closedAt: Number })
  t.match(statuses[3], { userId: u, state: 'online' })
})
