import fp from 'fastify-plugin'
import fastifyEnv from '@fastify/env'
import envSchema from 'env-schema'
import { isIP } from 'node:net'
import { Type, type Static } from '@fastify/type-provider-typebox'
import { JWT_SECRET_MIN } from '../src/dev-secret.js'
import { parseTemplateFields } from '../src/notify/template.js'

/** A comma list: env-schema's `separator` splits the text into an array while validating. */
function commaList (): ReturnType<typeof Type.Unsafe<string[]>> {
  return Type.Unsafe<string[]>({ type: 'string', separator: ',', default: '' })
}

const HOST_PORT_LIST = '^[^,:\\s]+:[0-9]{1,5}(,[^,:\\s]+:[0-9]{1,5})*$'

/**
 * Every setting of the service, and the only place one is declared: `Config` is derived from it.
 * The names are a contract with operators: README, "Configuration".
 */
export const configSchema = Type.Object({
  HOST: Type.String({ default: '0.0.0.0' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  NODE_ENV: Type.Enum(['development', 'production', 'test'], { default: 'development' }),
  // Unset: Redis when one is configured, else the embedded store, which production refuses (checkRedisChoice).
  STORE: Type.Optional(Type.Enum(['redis', 'memory'])),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  // Redis Cluster or Sentinel instead of REDIS_URL: comma lists of host:port.
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ pattern: HOST_PORT_LIST })),
  REDIS_SENTINELS: Type.Optional(Type.String({ pattern: HOST_PORT_LIST })),
  REDIS_SENTINEL_NAME: Type.Optional(Type.String({ minLength: 1 })),
  // For REDIS_CLUSTER_NODES and REDIS_SENTINELS (REDIS_URL carries its own).
  REDIS_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  // Replicas that must hold an ingest (Redis WAIT) before it is acknowledged; one server or Sentinel.
  REDIS_WAIT_REPLICAS: Type.Integer({ minimum: 0, maximum: 100, default: 0 }),
  // Unset: a generated development secret, or refused in production (plugins/auth.ts). A short
  // secret is refused in every NODE_ENV: a staging secret is as guessable as a production one.
  JWT_SECRET: Type.Optional(Type.String({ minLength: JWT_SECRET_MIN })),
  HEART_KEY_PREFIX: Type.String({ pattern: '^[^{}\\s]*$', maxLength: 64, default: 'heart:' }),
  MAX_PAYLOAD_BYTES: Type.Integer({ minimum: 64, maximum: 1048576, default: 4096 }),
  PING_INTERVAL_MS: Type.Integer({ minimum: 50, maximum: 3600000, default: 25000 }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, maximum: 600000, default: 10000 }),
  // true, false, or a comma list of proxy addresses, CIDR ranges, or loopback/linklocal/uniquelocal (checkTrustProxy).
  TRUST_PROXY: Type.String({ default: 'false' }),
  INGEST_API_KEYS: commaList(),
  HISTORY_MAX: Type.Integer({ minimum: 1, maximum: 10000000, default: 10000 }),
  MAX_SUBSCRIPTIONS_PER_CONNECTION: Type.Integer({ minimum: 1, maximum: 10000, default: 20 }),
  MAX_BUFFERED_BYTES: Type.Integer({ minimum: 1024, maximum: 1073741824, default: 1048576 }),
  LEGACY_KEYSPACE_EVENTS: Type.Boolean({ default: false }),
  // A user is offline when their newest reading is this old, or when there was none (status frames).
  OFFLINE_AFTER_MS: Type.Integer({ minimum: 1000, maximum: 86400000, default: 15000 }),
  // Identity and access
  JWT_PUBLIC_KEY: Type.Optional(Type.String({ minLength: 1 })),
  TOKEN_TTL_S: Type.Integer({ minimum: 60, maximum: 2592000, default: 7200 }),
  // When set, minted tokens carry them and every token must match (plugins/auth.ts).
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  JWT_CLOCK_TOLERANCE_S: Type.Integer({ minimum: 0, maximum: 300, default: 5 }),
  WECHAT_APPID: Type.Optional(Type.String({ minLength: 1 })),
  WECHAT_SECRET: Type.Optional(Type.String({ minLength: 1 })),
  WECHAT_API_BASE: Type.String({ pattern: '^https?://[^\\s]+$', default: 'https://api.weixin.qq.com' }),
  WECHAT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 60000, default: 5000 }),
  // Alert messages (src/notify/): off unless WECHAT_APPID, WECHAT_SECRET and the template are set.
  WECHAT_ALERT_TEMPLATE_ID: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  WECHAT_ALERT_PAGE: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
  // A JSON object: template key → text with {owner}, {kind}, {bpm}, {time} (src/notify/template.ts).
  WECHAT_ALERT_FIELDS: Type.Optional(Type.String({ minLength: 2 })),
  WECHAT_MINIPROGRAM_STATE: Type.Enum(['formal', 'trial', 'developer'], { default: 'formal' }),
  LOGIN_RATE_LIMIT: Type.Integer({ minimum: 1, maximum: 100000, default: 10 }),
  ENABLE_DEV_LOGIN: Type.Boolean({ default: false }),
  // No default: unset means on outside production (routes/demo.ts).
  ENABLE_DEMO: Type.Optional(Type.Boolean()),
  MAX_CONNECTIONS_PER_USER: Type.Integer({ minimum: 1, maximum: 1000000, default: 5 }),
  // Open sockets on one instance; no default: unset means no limit (routes/heart/current.ts).
  MAX_CONNECTIONS: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000000 })),
  ALLOWED_ORIGINS: commaList(),
  // Flood control
  MESSAGE_RATE_LIMIT: Type.Integer({ minimum: 1, maximum: 1000000, default: 20 }),
  UPGRADE_RATE_LIMIT: Type.Integer({ minimum: 1, maximum: 1000000, default: 60 }),
  // Readings per second a user may `publish` per instance; the bucket holds 60 s of them (src/heart/publish-limit.ts).
  PUBLISH_RATE_LIMIT: Type.Integer({ minimum: 1, maximum: 100000, default: 10 }),
  HISTORY_RATE_LIMIT: Type.Integer({ minimum: 1, maximum: 1000000, default: 60 }),
  // How often every open subscription to another user's readings has its grant asked again (plugins/hub.ts).
  GRANT_RECHECK_MS: Type.Integer({ minimum: 100, maximum: 3600000, default: 60000 }),
  // Operations
  METRICS_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  // No default: unset means on outside production (plugins/api-docs.ts).
  ENABLE_API_DOCS: Type.Optional(Type.Boolean())
})

export type Config = Static<typeof configSchema>

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export type Env = Record<string, string | undefined>

export interface ConfigOptions {
  /** Settings loadConfig has validated already (src/server.ts needs them before Fastify exists). */
  config?: Config
  /** Otherwise the settings to read; defaults to process.env. Tests pass their own. */
  env?: Env
}

const NAMED_PROXY_RANGES = new Set(['loopback', 'linklocal', 'uniquelocal'])

/** One TRUST_PROXY item as Fastify reads it: an address, a CIDR range, or a named range. */
function isProxyItem (item: string): boolean {
  if (NAMED_PROXY_RANGES.has(item)) return true
  const [addr, bits, ...rest] = item.split('/')
  const family = isIP(addr)
  if (family === 0 || rest.length > 0) return false
  return bits === undefined || (/^[0-9]{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128))
}

/**
 * The schema's pattern only limits the characters: `1` (a hop count) or `abc` would pass it, and
 * Fastify would read `1` as the address 0.0.0.1 (trusting no real proxy) and throw on `abc`
 * without naming the variable.
 */
function checkTrustProxy (value: string): void {
  if (value === 'true' || value === 'false' || value.split(',').every(isProxyItem)) return
  throw new Error('env/TRUST_PROXY must be true, false, or a comma list of proxy addresses, CIDR ranges, loopback, linklocal or uniquelocal (hop counts are not accepted)')
}

const REDIS_SETTINGS = 'REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES'

/**
 * One way to reach Redis at most, a Sentinel deployment needs its master's name, and STORE agrees
 * with it. Production never falls back to the embedded store by omission: several instances behind
 * nginx would each keep data of their own.
 */
function checkRedisChoice (cfg: Config): void {
  const chosen = (['REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_SENTINELS'] as const).filter((k) => cfg[k] !== undefined)
  if (chosen.length > 1) throw new Error(`env/${chosen[1]} cannot be combined with ${chosen[0]}: set one way to reach Redis`)
  if (cfg.STORE === 'redis' && chosen.length === 0) throw new Error(`env/STORE=redis needs ${REDIS_SETTINGS}`)
  if (cfg.STORE === 'memory' && chosen.length > 0) throw new Error(`env/STORE=memory cannot be combined with ${chosen[0]}: choose one store`)
  if (cfg.STORE === undefined && chosen.length === 0 && cfg.NODE_ENV === 'production') {
    throw new Error(`env/STORE: with NODE_ENV=production set ${REDIS_SETTINGS}, or STORE=memory to run on the embedded store (one instance only; nothing survives a restart)`)
  }
  if (cfg.REDIS_SENTINELS !== undefined && cfg.REDIS_SENTINEL_NAME === undefined) {
    throw new Error('env/REDIS_SENTINEL_NAME must name the master group when REDIS_SENTINELS is set')
  }
  if (cfg.REDIS_WAIT_REPLICAS > 0 && (cfg.REDIS_CLUSTER_NODES !== undefined || chosen.length === 0)) {
    throw new Error('env/REDIS_WAIT_REPLICAS needs REDIS_URL or REDIS_SENTINELS (not supported on Redis Cluster or the embedded store)')
  }
}

/** 127.0.0.0/8, ::1 and localhost: the only hosts plain http may reach (a local stub or proxy). */
function isLoopbackHost (hostname: string): boolean {
  if (hostname === 'localhost' || hostname === '[::1]') return true
  return isIP(hostname) === 4 && hostname.startsWith('127.')
}

/** code2Session carries the AppSecret and answers with a session key: never in clear text over a network. */
function checkWeChatApiBase (value: string): void {
  let url: URL | null = null
  try {
    url = new URL(value)
  } catch {}
  if (url?.protocol === 'https:' || (url?.protocol === 'http:' && isLoopbackHost(url.hostname))) return
  throw new Error('env/WECHAT_API_BASE must be an https:// URL (http:// only for a loopback host: 127.0.0.0/8, ::1 or localhost)')
}

/** env-schema's options for the settings in `env` (a copy of the schema: env-schema adds to it). */
function envOptions (env: Env): { schema: typeof configSchema, data: Env, env: false } {
  return { schema: structuredClone(configSchema), data: env, env: false }
}

/** The alert template needs its fields, and they must parse. */
function checkAlertTemplate (cfg: Config): void {
  if (cfg.WECHAT_ALERT_FIELDS !== undefined) parseTemplateFields(cfg.WECHAT_ALERT_FIELDS)
  if (cfg.WECHAT_ALERT_TEMPLATE_ID !== undefined && cfg.WECHAT_ALERT_FIELDS === undefined) {
    throw new Error('env/WECHAT_ALERT_FIELDS must map the keys of WECHAT_ALERT_TEMPLATE_ID to {owner}, {kind}, {bpm} or {time}')
  }
}

/** What a JSON schema cannot say. */
function checkSettings (config: Config): Config {
  checkTrustProxy(config.TRUST_PROXY)
  checkRedisChoice(config)
  checkWeChatApiBase(config.WECHAT_API_BASE)
  checkAlertTemplate(config)
  return config
}

/** Validates the settings: types, defaults, ranges; throws naming the variable. */
export function loadConfig (env: Env): Config {
  return checkSettings(envSchema<Config>(envOptions(env)))
}

/**
 * `TRUST_PROXY` as Fastify's `trustProxy` takes it. Hop counts are not offered: Fastify 5 no
 * longer trusts a hop count (it cannot check the immediate peer), so name the proxies instead.
 */
export function trustProxyOption (value: string): boolean | string {
  if (value === 'true') return true
  if (value === 'false') return false
  return value
}

/**
 * `fastify.config`: the settings, validated once. The server validates before Fastify exists
 * (it needs the log level and trustProxy to create it) and hands the result over; otherwise
 * (tests, an app embedded elsewhere) @fastify/env validates the given environment with the same
 * schema and options.
 */
export default fp(async function config (fastify, opts: ConfigOptions) {
  if (opts.config !== undefined) {
    fastify.decorate('config', opts.config)
    return
  }
  await fastify.register(fastifyEnv, { ...envOptions(opts.env ?? process.env), confKey: 'config' })
  checkSettings(fastify.config)
}, { name: 'config' })
