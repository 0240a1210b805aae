import t, { type Test } from 'tap'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import appPlugin from '../src/app.js'
import { configSchema, loadConfig, trustProxyOption } from '../plugins/config.js'
import { TEST_SECRET, build, testEnv, token } from './helper.js'

/** What each setting is when nothing sets it. Every setting of the schema must be listed here. */
const DEFAULTS: Record<string, unknown> = {
  HOST: '0.0.0.0',
  PORT: 3000,
  LOG_LEVEL: 'info',
  NODE_ENV: 'development',
  STORE: undefined,
  REDIS_URL: undefined,
  REDIS_CLUSTER_NODES: undefined,
  REDIS_SENTINELS: undefined,
  REDIS_SENTINEL_NAME: undefined,
  REDIS_PASSWORD: undefined,
  REDIS_WAIT_REPLICAS: 0,
  JWT_SECRET: undefined,
  HEART_KEY_PREFIX: 'heart:',
  MAX_PAYLOAD_BYTES: 4096,
  PING_INTERVAL_MS: 25000,
  SHUTDOWN_GRACE_MS: 10000,
  TRUST_PROXY: 'false',
  INGEST_API_KEYS: [],
  HISTORY_MAX: 10000,
  MAX_SUBSCRIPTIONS_PER_CONNECTION: 20,
  MAX_BUFFERED_BYTES: 1048576,
  LEGACY_KEYSPACE_EVENTS: false,
  OFFLINE_AFTER_MS: 15000,
  JWT_PUBLIC_KEY: undefined,
  TOKEN_TTL_S: 7200,
  JWT_ISSUER: undefined,
  JWT_AUDIENCE: undefined,
  JWT_CLOCK_TOLERANCE_S: 5,
  WECHAT_APPID: undefined,
  WECHAT_SECRET: undefined,
  WECHAT_API_BASE: 'https://api.weixin.qq.com',
  WECHAT_TIMEOUT_MS: 5000,
  WECHAT_ALERT_TEMPLATE_ID: undefined,
  WECHAT_ALERT_PAGE: undefined,
  WECHAT_ALERT_FIELDS: undefined,
  WECHAT_MINIPROGRAM_STATE: 'formal',
  LOGIN_RATE_LIMIT: 10,
  ENABLE_DEV_LOGIN: false,
  ENABLE_DEMO: undefined,
  ENABLE_API_DOCS: undefined,
  METRICS_TOKEN: undefined,
  MAX_CONNECTIONS_PER_USER: 5,
  MAX_CONNECTIONS: undefined,
  ALLOWED_ORIGINS: [],
  MESSAGE_RATE_LIMIT: 20,
  UPGRADE_RATE_LIMIT: 60,
  PUBLISH_RATE_LIMIT: 10,
  HISTORY_RATE_LIMIT: 60,
  GRANT_RECHECK_MS: 60000
}

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'heart-config-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** The generated development secret: the auth plugin keeps it in its file, not in app.config. */
async function devSecret (file: string): Promise<string> {
  return (await readFile(file, 'utf8')).trim()
}

t.test('every setting of the schema has a known default', async (t) => {
  t.same(Object.keys(configSchema.properties).sort(), Object.keys(DEFAULTS).sort(),
    'a new setting needs its default listed in DEFAULTS')
})

t.test('settings left unset take their defaults in app.config', async (t) => {
  // JWT_SECRET stays set so no development secret is generated here; the rest is unset.
  const app = await build(t, { NODE_ENV: undefined, LOG_LEVEL: undefined, STORE: undefined, MESSAGE_RATE_LIMIT: undefined, UPGRADE_RATE_LIMIT: undefined, MAX_CONNECTIONS_PER_USER: undefined })
  for (const [name, value] of Object.entries(DEFAULTS)) {
    if (name === 'JWT_SECRET') continue
    t.same((app.config as unknown as Record<string, unknown>)[name], value, name)
  }
  t.equal(app.config.JWT_SECRET, TEST_SECRET)
})

t.test('settings are read from the env option and coerced to their types', async (t) => {
  const app = await build(t, {
    HOST: '127.0.0.1',
    PORT: '8080',
    HEART_KEY_PREFIX: '',
    MAX_PAYLOAD_BYTES: '256',
    PING_INTERVAL_MS: '100',
    SHUTDOWN_GRACE_MS: '0',
    TRUST_PROXY: '10.0.0.0/8,loopback',
    INGEST_API_KEYS: 'k1,k2'
  })
  t.equal(app.config.HOST, '127.0.0.1')
  t.equal(app.config.PORT, 8080)
  t.equal(app.config.HEART_KEY_PREFIX, '', 'an empty prefix (the original layout) is allowed')
  t.equal(app.config.MAX_PAYLOAD_BYTES, 256)
  t.equal(app.config.PING_INTERVAL_MS, 100)
  t.equal(app.config.SHUTDOWN_GRACE_MS, 0)
  t.equal(app.config.TRUST_PROXY, '10.0.0.0/8,loopback')
  t.same(app.config.INGEST_API_KEYS, ['k1', 'k2'])
})

const BAD_VALUES: Array<[string, string]> = [
  ['PORT', 'abc'],
  ['PORT', '70000'],
  ['PORT', '-1'],
  ['MAX_PAYLOAD_BYTES', '-1'],
  ['MAX_PAYLOAD_BYTES', 'lots'],
  ['PING_INTERVAL_MS', '0'],
  ['SHUTDOWN_GRACE_MS', '-5'],
  ['REDIS_URL', 'http://x'],
  ['REDIS_URL', 'localhost:6379'],
  ['HEART_KEY_PREFIX', 'a{b'],
  ['HEART_KEY_PREFIX', 'a b'],
  ['TRUST_PROXY', 'yes please'],
  ['TRUST_PROXY', 'abc'],
  ['TRUST_PROXY', '1'],
  ['TRUST_PROXY', '10.0.0.0/99'],
  ['TRUST_PROXY', '127.0.0.1,'],
  ['LOG_LEVEL', 'loud'],
  ['NODE_ENV', 'staging'],
  ['JWT_SECRET', ''],
  // Too short whatever NODE_ENV is (this file runs with NODE_ENV=test).
  ['JWT_SECRET', 'x'.repeat(31)],
  ['JWT_ISSUER', ''],
  ['JWT_AUDIENCE', ''],
  ['JWT_CLOCK_TOLERANCE_S', '-1'],
  ['JWT_CLOCK_TOLERANCE_S', '301'],
  ['JWT_CLOCK_TOLERANCE_S', 'soon'],
  ['PUBLISH_RATE_LIMIT', '0'],
  ['PUBLISH_RATE_LIMIT', '2.5'],
  ['HISTORY_RATE_LIMIT', '0'],
  ['HISTORY_RATE_LIMIT', 'many'],
  ['GRANT_RECHECK_MS', '99'],
  ['GRANT_RECHECK_MS', 'hourly'],
  ['HISTORY_MAX', '0'],
  ['MAX_SUBSCRIPTIONS_PER_CONNECTION', '0'],
  ['MAX_BUFFERED_BYTES', '10'],
  ['STORE', 'disk'],
  ['MAX_CONNECTIONS', '0'],
  ['MAX_CONNECTIONS', 'many'],
  ['LEGACY_KEYSPACE_EVENTS', 'maybe'],
  ['REDIS_WAIT_REPLICAS', '-1'],
  ['REDIS_WAIT_REPLICAS', 'one'],
  ['REDIS_WAIT_REPLICAS', '1'],
  ['WECHAT_API_BASE', 'http://api.weixin.qq.com'],
  ['WECHAT_API_BASE', 'http://localhost.example.com'],
  ['WECHAT_API_BASE', 'http://127.0.0.1.example.com'],
  ['WECHAT_API_BASE', 'http://10.0.0.1:8080'],
  ['WECHAT_API_BASE', 'ftp://api.weixin.qq.com'],
  ['OFFLINE_AFTER_MS', '999'],
  ['OFFLINE_AFTER_MS', 'soon'],
  ['WECHAT_MINIPROGRAM_STATE', 'beta'],
  ['WECHAT_ALERT_FIELDS', 'thing1'],
  ['WECHAT_ALERT_FIELDS', '{"thing1":"{nickname}"}'],
  ['WECHAT_ALERT_TEMPLATE_ID', 'tpl-without-fields']
]

for (const [name, value] of BAD_VALUES) {
  t.test(`${name}=${JSON.stringify(value)} stops start-up with a message naming ${name}`, async (t) => {
    await t.rejects(build(t, { [name]: value }), { message: new RegExp(`\\b${name}\\b`) })
  })
}

t.test('loadConfig rejects the same bad values, naming the variable', async (t) => {
  for (const [name, value] of BAD_VALUES) {
    t.throws(() => loadConfig({ [name]: value }), { message: new RegExp(`\\b${name}\\b`) }, `${name}=${JSON.stringify(value)}`)
  }
})

t.test('WECHAT_API_BASE may be plain http only on a loopback host', async (t) => {
  for (const base of ['https://proxy.example.com/wx', 'http://127.0.0.1:9', 'http://127.8.9.10', 'http://[::1]:9', 'http://localhost:9/wx']) {
    t.equal(loadConfig({ WECHAT_API_BASE: base }).WECHAT_API_BASE, base, base)
  }
})

t.test('loadConfig gives the defaults for an empty environment and coerces what is set', async (t) => {
  const config = loadConfig({})
  for (const [name, value] of Object.entries(DEFAULTS)) {
    t.same((config as unknown as Record<string, unknown>)[name], value, name)
  }
  const set = loadConfig({ PORT: '4000', LOG_LEVEL: 'warn', TRUST_PROXY: 'true', REDIS_URL: 'rediss://cache:6380/2' })
  t.equal(set.PORT, 4000)
  t.equal(set.LOG_LEVEL, 'warn')
  t.equal(set.TRUST_PROXY, 'true')
  t.equal(set.REDIS_URL, 'rediss://cache:6380/2')
})

t.test('loadConfig does not change the shared schema (defaults survive repeated loads)', async (t) => {
  loadConfig({ PORT: '1234' })
  t.equal(loadConfig({}).PORT, 3000)
  t.equal((configSchema.properties.PORT as { default?: unknown }).default, 3000)
})

t.test('settings validated already are used as given, not validated again', async (t) => {
  const config = loadConfig(testEnv())
  const f = Fastify()
  t.teardown(() => f.close())
  await f.register(fp(appPlugin), { config })
  await f.ready()
  t.equal(f.config, config, 'the very object src/server.ts validated')
})

t.test('trustProxyOption turns TRUST_PROXY into what Fastify takes', async (t) => {
  t.equal(trustProxyOption('true'), true)
  t.equal(trustProxyOption('false'), false)
  t.equal(trustProxyOption('10.0.0.1'), '10.0.0.1')
  t.equal(trustProxyOption('10.0.0.0/8,loopback'), '10.0.0.0/8,loopback')
})

t.test('a trusted proxy list makes Fastify take the client address from X-Forwarded-For', async (t) => {
  const ip = async (trustProxy: string): Promise<string> => {
    const f = Fastify({ trustProxy: trustProxyOption(loadConfig({ TRUST_PROXY: trustProxy }).TRUST_PROXY) })
    t.teardown(() => f.close())
    f.get('/', async (request) => request.ip)
    return (await f.inject({ url: '/', headers: { 'x-forwarded-for': '203.0.113.7' } })).body
  }
  t.equal(await ip('false'), '127.0.0.1', 'not trusted: the peer address')
  t.equal(await ip('true'), '203.0.113.7')
  t.equal(await ip('loopback'), '203.0.113.7', 'inject comes from 127.0.0.1, a loopback proxy')
  t.equal(await ip('127.0.0.1'), '203.0.113.7')
  t.equal(await ip('10.0.0.0/8'), '127.0.0.1', 'a proxy list that does not include the peer')
})

t.test('production without JWT_SECRET stops start-up naming JWT_SECRET and writes no secret file', async (t) => {
  const file = join(await tempDir(t), 'secret')
  await t.rejects(build(t, { NODE_ENV: 'production', JWT_SECRET: undefined }, { devSecretFile: file }), { message: /\bJWT_SECRET\b/ })
  t.notOk(existsSync(file))
})

t.test('production with a JWT_SECRET shorter than 32 characters stops start-up naming JWT_SECRET', async (t) => {
  await t.rejects(build(t, { NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(31) }), { message: /\bJWT_SECRET\b/ })
})

t.test('production with a JWT_SECRET of 32 characters starts and uses it', async (t) => {
  const secret = 'p'.repeat(32)
  const app = await build(t, { NODE_ENV: 'production', JWT_SECRET: secret })
  t.equal(app.config.NODE_ENV, 'production')
  t.equal(app.config.JWT_SECRET, secret)
  const ws = await app.injectWS('/heart/current', { headers: { authorization: `Bearer ${token('u1', { secret })}` } })
  ws.terminate()
})

t.test('without JWT_SECRET outside production a secret is generated, kept with mode 0600 and a warning logged', async (t) => {
  const file = join(await tempDir(t), 'nested', 'dev-jwt-secret')
  const logs: string[] = []
  const app = await build(t, { JWT_SECRET: undefined }, { logs, devSecretFile: file })
  const secret = await devSecret(file)
  t.ok(secret.length >= 32, 'a secret of at least 32 characters')
  t.equal(app.config.JWT_SECRET, undefined, 'the settings stay as given')
  t.equal((await stat(file)).mode & 0o777, 0o600, 'readable by its owner only')
  const warnings = logs.map((l) => JSON.parse(l)).filter((l) => l.level === 40 && /JWT_SECRET/.test(l.msg))
  t.equal(warnings.length, 1, 'one warning names JWT_SECRET')
  t.notOk(logs.some((l) => l.includes(secret)), 'the secret itself is never logged')
  const ws = await app.injectWS('/heart/current', { headers: { authorization: `Bearer ${token('u1', { secret })}` } })
  ws.terminate()
  await t.rejects(app.injectWS('/heart/current', { headers: { authorization: `Bearer ${token('u1')}` } }), /401/, 'tokens are verified with the kept secret only')
})

t.test('a second start without JWT_SECRET reuses the generated secret', async (t) => {
  const file = join(await tempDir(t), 'dev-jwt-secret')
  await build(t, { JWT_SECRET: undefined }, { devSecretFile: file })
  const secret = await devSecret(file)
  const second = await build(t, { JWT_SECRET: undefined }, { devSecretFile: file })
  t.equal(await devSecret(file), secret)
  const ws = await second.injectWS('/heart/current', { headers: { authorization: `Bearer ${token('u1', { secret })}` } })
  ws.terminate()
})

t.test('a development secret file holding too short a secret is replaced', async (t) => {
  const file = join(await tempDir(t), 'dev-jwt-secret')
  await writeFile(file, 'short\n', { mode: 0o600 })
  const app = await build(t, { JWT_SECRET: undefined }, { devSecretFile: file })
  const secret = await devSecret(file)
  t.ok(secret.length >= 32)
  const ws = await app.injectWS('/heart/current', { headers: { authorization: `Bearer ${token('u1', { secret })}` } })
  ws.terminate()
})

t.test('a JWT_SECRET that is set is used as is, with no file and no warning', async (t) => {
  const file = join(await tempDir(t), 'dev-jwt-secret')
  const logs: string[] = []
  const app = await build(t, {}, { logs, devSecretFile: file })
  t.equal(app.config.JWT_SECRET, TEST_SECRET)
  t.notOk(existsSync(file))
  t.notOk(logs.some((l) => /JWT_SECRET/.test(l)))
})

t.test('one way to reach Redis at most, and Sentinel needs the master name', async (t) => {
  await t.rejects(build(t, { REDIS_URL: 'redis://127.0.0.1:1', REDIS_CLUSTER_NODES: '127.0.0.1:7000' }), /REDIS_CLUSTER_NODES cannot be combined with REDIS_URL/)
  await t.rejects(build(t, { REDIS_SENTINELS: '127.0.0.1:26379' }), /REDIS_SENTINEL_NAME/)
  await t.rejects(build(t, { REDIS_CLUSTER_NODES: '127.0.0.1' }), /REDIS_CLUSTER_NODES/)
  await t.rejects(build(t, { REDIS_CLUSTER_NODES: '127.0.0.1:7000', REDIS_WAIT_REPLICAS: '1' }), /REDIS_WAIT_REPLICAS needs REDIS_URL or REDIS_SENTINELS/)
  t.equal(loadConfig({ REDIS_URL: 'redis://127.0.0.1:1', REDIS_WAIT_REPLICAS: '2' }).REDIS_WAIT_REPLICAS, 2)
})

t.test('STORE: production refuses to start on the embedded store unless asked for; development keeps it as the default', async (t) => {
  const prod = { NODE_ENV: 'production', JWT_SECRET: 'p'.repeat(40) }
  await t.rejects(build(t, { ...prod, STORE: undefined }), { message: /STORE: with NODE_ENV=production set REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES, or STORE=memory/ })
  const memory = await build(t, { ...prod, STORE: 'memory' })
  t.equal(memory.heartStore.constructor.name, 'MemoryStore', 'STORE=memory in production: the embedded store')
  const dev = await build(t, { NODE_ENV: 'development', STORE: undefined })
  t.equal(dev.heartStore.constructor.name, 'MemoryStore', 'development without Redis: the embedded store, as before')
  await t.rejects(build(t, { STORE: 'redis' }), { message: /STORE=redis needs REDIS_URL/ })
  await t.rejects(build(t, { STORE: 'memory', REDIS_URL: 'redis://127.0.0.1:1' }), { message: /STORE=memory cannot be combined with REDIS_URL/ })
  t.throws(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'p'.repeat(40) }), { message: /\bSTORE\b/ }, 'loadConfig (the server) too')
})
