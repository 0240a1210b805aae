import t from 'tap'
import { build } from './helper.js'

t.test('OpenAPI is generated from the route schemas and served at /docs outside production', async (t) => {
  const app = await build(t)
  const res = await app.inject('/docs/json')
  t.equal(res.statusCode, 200)
  const spec = res.json()
  t.match(spec, { openapi: /^3\./, info: { title: 'heart-gateway' } })
  for (const path of ['/health', '/heart/{userId}/readings', '/shares/{viewerId}', '/shares', '/shares/watching', '/auth/wechat', '/devices', '/devices/{deviceId}']) {
    t.ok(spec.paths[path], `${path} is documented`)
  }
  const ingest = spec.paths['/heart/{userId}/readings'].post
  t.ok(ingest.requestBody, 'ingest documents its body')
  t.ok(ingest.responses['202'], 'and its 202')
  t.notOk(spec.paths['/heart/current'], 'the WebSocket route is documented in docs/protocol.md, not here')
  t.equal((await app.inject('/docs/')).statusCode, 200, 'the UI')
})

t.test('API docs are off in production unless ENABLE_API_DOCS=true', async (t) => {
  const prod = { NODE_ENV: 'production', JWT_SECRET: 'p'.repeat(40) }
  t.equal((await (await build(t, prod)).inject('/docs/json')).statusCode, 404)
  t.equal((await (await build(t, { ...prod, ENABLE_API_DOCS: 'true' })).inject('/docs/json')).statusCode, 200)
  t.equal((await (await build(t, { ENABLE_API_DOCS: 'false' })).inject('/docs/json')).statusCode, 404)
})
