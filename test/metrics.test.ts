import t from 'tap'
import { buildWithRedis, bearer, eventually, openSocket, sharedRedis } from './helper.js'

const KEY = 'metrics-key'

/** The value of one sample line of the Prometheus text, or undefined when absent. */
function sample (text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '))
  return line === undefined ? undefined : Number(line.slice(name.length + 1))
}

t.test('metrics move as traffic flows: connections, subscriptions, frames, errors, ingest, push latency, Redis', async (t) => {
  const app = await buildWithRedis(t, { INGEST_API_KEYS: KEY })
  const scrape = async (): Promise<string> => (await app.inject('/metrics')).body
  const before = await scrape()
  t.equal(sample(before, 'heart_connections_open'), 0)
  t.equal(sample(before, 'heart_redis_up'), 1)
  t.match(before, /heart_nodejs_eventloop_lag_seconds/, 'event-loop lag')
  t.match(before, /heart_process_resident_memory_bytes/, 'process memory')

  const frames = await openSocket(app, 'u1')
  await frames.ask({ type: 'subscribe', userId: 'u1' })
  await frames.ask({ type: 'ping' })
  await frames.ask('u1')
  await frames.ask('{oops')
  await frames.ask({ type: 'get', userId: 'u2' })
  const ok = await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': KEY }, payload: { readings: [{ bpm: 70 }, { bpm: 71 }] } })
  t.equal(ok.statusCode, 202)
  await frames.json()
  await frames.json()
  await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': 'wrong' }, payload: { bpm: 70 } })
  await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': KEY }, payload: { bpm: 7 } })

  const during = await scrape()
  t.equal(sample(during, 'heart_connections_open'), 1)
  t.equal(sample(during, 'heart_subscriptions'), 1)
  t.equal(sample(during, 'heart_watched_users'), 1)
  t.equal(sample(during, 'heart_frames_in_total{type="subscribe"}'), 1)
  t.equal(sample(during, 'heart_frames_in_total{type="ping"}'), 1)
  t.equal(sample(during, 'heart_frames_in_total{type="legacy"}'), 1)
  t.equal(sample(during, 'heart_frames_in_total{type="invalid"}'), 1)
  t.equal(sample(during, 'heart_frames_out_total{type="reading"}'), 2)
  t.equal(sample(during, 'heart_frames_out_total{type="error"}'), 2)
  t.equal(sample(during, 'heart_errors_total{code="bad_request"}'), 1)
  t.equal(sample(during, 'heart_errors_total{code="forbidden"}'), 1)
  t.equal(sample(during, 'heart_ingest_accepted_total'), 2)
  t.equal(sample(during, 'heart_ingest_rejected_total{status="401"}'), 1)
  t.equal(sample(during, 'heart_ingest_rejected_total{status="400"}'), 1)
  t.equal(sample(during, 'heart_push_latency_seconds_count'), 2, 'one latency sample per reading delivered')

  const redis = await sharedRedis()
  await redis.stop()
  const res = await app.inject({ method: 'POST', url: '/heart/u1/readings', headers: { 'x-api-key': KEY }, payload: { bpm: 70 } })
  t.equal(res.statusCode, 503)
  const down = await scrape()
  t.ok(await eventually(async () => sample(await scrape(), 'heart_redis_up') === 0, 2000), 'redis_up drops to 0 once the connection is seen to be gone')
  t.ok((sample(down, 'heart_store_errors_total') ?? 0) >= 1, 'store errors counted')
  t.equal(sample(down, 'heart_ingest_rejected_total{status="503"}'), 1)
  frames.ws.terminate()
  await redis.start()
})

t.test('with METRICS_TOKEN, /metrics needs it as a Bearer token', async (t) => {
  const app = await buildWithRedis(t, { METRICS_TOKEN: 'scrape-secret-0123456789' })
  t.equal((await app.inject('/metrics')).statusCode, 401)
  t.equal((await app.inject({ url: '/metrics', headers: { authorization: 'Bearer nope' } })).statusCode, 401)
  t.equal((await app.inject({ url: '/metrics', headers: bearer('u1') })).statusCode, 401, 'a user token is not the metrics token')
  const ok = await app.inject({ url: '/metrics', headers: { authorization: 'Bearer scrape-secret-0123456789' } })
  t.equal(ok.statusCode, 200)
  t.match(ok.headers['content-type'], /text\/plain/)
})
