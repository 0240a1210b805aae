import fp from 'fastify-plugin'
import fastifyEnv from '@fastify/env'
import envSchema from 'env-schema'
import { isIP } from 'node:net'
import { loadDevSecret } from '../src/dev-secret.js'

/** Every setting of the service. The names are a contract with operators: README, "Configuration". */
export const configSchema = {
  type: 'object',
  required: [],
  properties: {
    HOST: { type: 'string', default: '0.0.0.0' },
    PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 3000 },
    LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    NODE_ENV: { type: 'string', enum: ['development', 'production', 'test'], default: 'development' },
    REDIS_URL: { type: 'string', pattern: '^rediss?://' },
    // Redis Cluster or Sentinel instead of REDIS_URL: comma lists of host:port.
    REDIS_CLUSTER_NODES: { type: 'string', pattern: '^[^,:\\s]+:[0-9]{1,5}(,[^,:\\s]+:[0-9]{1,5})*$' },
    REDIS_SENTINELS: { type: 'string', pattern: '^[^,:\\s]+:[0-9]{1,5}(,[^,:\\s]+:[0-9]{1,5})*$' },
    REDIS_SENTINEL_NAME: { type: 'string', minLength: 1 },
    REDIS_PASSWORD: { type: 'string', minLength: 1 },
    JWT_SECRET: { type: 'string', minLength: 1 },
    HEART_KEY_PREFIX: { type: 'string', pattern: '^[^{}\\s]*$', maxLength: 64, default: 'heart:' },
    MAX_PAYLOAD_BYTES: { type: 'integer', minimum: 64, maximum: 1048576, default: 4096 },
    PING_INTERVAL_MS: { type: 'integer', minimum: 50, maximum: 3600000, default: 25000 },
    SHUTDOWN_GRACE_MS: { type: 'integer', minimum: 0, maximum: 600000, default: 10000 },
    // true, false, or a comma list of proxy addresses, CIDR ranges, or loopback/linklocal/uniquelocal (checkTrustProxy).
    TRUST_PROXY: { type: 'string', default: 'false' },
    INGEST_API_KEYS: { type: 'string', separator: ',', default: '' },
    HISTORY_MAX: { type: 'integer', minimum: 1, maximum: 10000000, default: 10000 },
    MAX_SUBSCRIPTIONS_PER_CONNECTION: { type: 'integer', minimum: 1, maximum: 10000, default: 20 },
    MAX_BUFFERED_BYTES: { type: 'integer', minimum: 1024, maximum: 1073741824, default: 1048576 },
    LEGACY_KEYSPACE_EVENTS: { type: 'boolean', default: false },
    // Identity and access
    JWT_PUBLIC_KEY: { type: 'string', minLength: 1 },
    TOKEN_TTL_S: { type: 'integer', minimum: 60, maximum: 2592000, default: 7200 },
    WECHAT_APPID: { type: 'string', minLength: 1 },
    WECHAT_SECRET: { type: 'string', minLength: 1 },
    WECHAT_API_BASE: { type: 'string', pattern: '^https?://[^\\s]+$', default: 'https://api.weixin.qq.com' },
    WECHAT_TIMEOUT_MS: { type: 'integer', minimum: 100, maximum: 60000, default: 5000 },
    LOGIN_RATE_LIMIT: { type: 'integer', minimum: 1, maximum: 100000, default: 10 },
    ENABLE_DEV_LOGIN: { type: 'boolean', default: false },
    // No default: unset means on outside production (routes/demo.ts).
    ENABLE_DEMO: { type: 'boolean' },
    MAX_CONNECTIONS_PER_USER: { type: 'integer', minimum: 1, maximum: 1000000, default: 5 },
    ALLOWED_ORIGINS: { type: 'string', separator: ',', default: '' },
    // Flood control
    MESSAGE_RATE_LIMIT: { type: 'integer', minimum: 1, maximum: 1000000, default: 20 },
    UPGRADE_RATE_LIMIT: { type: 'integer', minimum: 1, maximum: 1000000, default: 60 },
    // Operations
    METRICS_TOKEN: { type: 'string', minLength: 16 },
    ENABLE_API_DOCS: { type: 'boolean' }
  }
} as const

export interface Config {
  HOST: string
  PORT: number
  LOG_LEVEL: string
  NODE_ENV: 'development' | 'production' | 'test'
  REDIS_URL?: string
  REDIS_CLUSTER_NODES?: string
  REDIS_SENTINELS?: string
  REDIS_SENTINEL_NAME?: string
  /** For REDIS_CLUSTER_NODES and REDIS_SENTINELS (REDIS_URL carries its own). */
  REDIS_PASSWORD?: string
  /** Unset only in public-key mode (JWT_PUBLIC_KEY). */
  JWT_SECRET: string
  HEART_KEY_PREFIX: string
  MAX_PAYLOAD_BYTES: number
  PING_INTERVAL_MS: number
  SHUTDOWN_GRACE_MS: number
  TRUST_PROXY: string
  INGEST_API_KEYS: string[]
  HISTORY_MAX: number
  MAX_SUBSCRIPTIONS_PER_CONNECTION: number
  MAX_BUFFERED_BYTES: number
  LEGACY_KEYSPACE_EVENTS: boolean
  JWT_PUBLIC_KEY?: string
  TOKEN_TTL_S: number
  WECHAT_APPID?: string
  WECHAT_SECRET?: string
  WECHAT_API_BASE: string
  WECHAT_TIMEOUT_MS: number
  LOGIN_RATE_LIMIT: number
  ENABLE_DEV_LOGIN: boolean
  /** The demo page at /demo; unset: on unless NODE_ENV=production. */
  ENABLE_DEMO?: boolean
  MAX_CONNECTIONS_PER_USER: number
  ALLOWED_ORIGINS: string[]
  MESSAGE_RATE_LIMIT: number
  UPGRADE_RATE_LIMIT: number
  METRICS_TOKEN?: string
  /** Unset: on outside production. */
  ENABLE_API_DOCS?: boolean
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export type Env = Record<string, string | undefined>

export interface ConfigOptions {
  /** The settings to read; defaults to process.env. Tests pass their own. */
  env?: Env
  /** Where a development JWT secret is kept when JWT_SECRET is not set (never in production). */
  devSecretFile?: string
}

const JWT_SECRET_MIN = 32

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

/** One way to reach Redis at most, and a Sentinel deployment needs its master's name. */
function checkRedisChoice (cfg: Config): void {
  const chosen = (['REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_SENTINELS'] as const).filter((k) => cfg[k] !== undefined)
  if (chosen.length > 1) throw new Error(`env/${chosen[1]} cannot be combined with ${chosen[0]}: set one way to reach Redis`)
  if (cfg.REDIS_SENTINELS !== undefined && cfg.REDIS_SENTINEL_NAME === undefined) {
    throw new Error('env/REDIS_SENTINEL_NAME must name the master group when REDIS_SENTINELS is set')
  }
}

/** Validates settings as the plugin does, for server.ts, which needs some before Fastify exists. */
export function loadConfig (env: Env): Config {
  const config = envSchema({ schema: structuredClone(configSchema), data: env, env: false }) as unknown as Config
  checkTrustProxy(config.TRUST_PROXY)
  checkRedisChoice(config)
  return config
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

export default fp(async function config (fastify, opts: ConfigOptions) {
  await fastify.register(fastifyEnv, { schema: structuredClone(configSchema), data: opts.env ?? process.env, env: false })
  const cfg = fastify.config
  checkTrustProxy(cfg.TRUST_PROXY)
  checkRedisChoice(cfg)
  if (cfg.JWT_PUBLIC_KEY !== undefined) {
    // Tokens come from another service and are only verified here; JWT_SECRET plays no part.
  } else if (cfg.NODE_ENV === 'production') {
    if (cfg.JWT_SECRET === undefined || cfg.JWT_SECRET.length < JWT_SECRET_MIN) {
      throw new Error(`env/JWT_SECRET must be set to at least ${JWT_SECRET_MIN} characters when NODE_ENV=production`)
    }
  } else if (cfg.JWT_SECRET === undefined) {
    const file = opts.devSecretFile ?? '.heart-gateway/dev-jwt-secret'
    cfg.JWT_SECRET = await loadDevSecret(file)
    fastify.log.warn({ file }, 'JWT_SECRET is not set: using a generated development secret (npm run token uses the same file); set JWT_SECRET in production')
  }
}, { name: 'config' })
