import t from 'tap'
import { RedisServer, build } from './helper.js'

t.test('health answers 200 with the embedded store', async (t) => {
  const app = await build(t)
  const res = await app.inject('/health')
  t.equal(res.statusCode, 200)
  t.match(res.json(), { status: 'ok', store: 'memory' })
})

t.test('health answers 503 while Redis is down and 200 once it is back', async (t) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const app = await build(t, { REDIS_URL: redis.url })
  t.match((await app.inject('/health')).json(), { status: 'ok', store: 'redis' })
  await redis.stop()
  const down = await app.inject('/health')
  t.equal(down.statusCode, 503)
  t.match(down.json(), { status: 'unavailable', store: 'redis' })
  await redis.start()
  let back = 0
  for (let i = 0; i < 100 && back !== 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    back = (await app.inject('/health')).statusCode
  }
  t.equal(back, 200)
})

t.test('health answers 503 while the instance drains', async (t) => {
  const app = await build(t)
  app.lifecycle.draining = true
  const res = await app.inject('/health')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { status: 'unavailable', reason: 'shutting down' })
})
