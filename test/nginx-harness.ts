/**
 * nginx.conf as production runs it, for whole-process tests: the real nginx binary, a self-signed
 * certificate, and two compiled instances sharing a private Redis, all on loopback ports of the
 * test's own. The config is used as written, with only the literals an operator replaces substituted.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import type http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import type { Env } from '../plugins/config.js'
import { Frames, ROOT, RedisServer, eventually, freePort, openWebSocket, startServer, uniquePrefix, type ServerProcess, type WsOptions } from './helper.js'

export { Refused, openWebSocket, type WsOptions } from './helper.js'

export const HOST = '127.0.0.1'
/** The certificate's name; the test config's server_name too. */
export const SERVER_NAME = 'localhost'
const TIMEOUT_MS = 5000

/** What startStack() needs of a tap test: teardowns run when the test (or file) ends. */
type Test = Parameters<typeof startServer>[0]

function nginxBinary (): string {
  if (process.env.NGINX_BIN !== undefined) return process.env.NGINX_BIN
  const found = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8', timeout: 5000 })
  return found.stdout.trim() || '/usr/sbin/nginx'
}

/** Replaces every occurrence of `from`, which must occur: a renamed literal fails the test instead of slipping through. */
function substitute (text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`nginx.conf no longer contains ${JSON.stringify(from)}: update test/nginx-harness.ts`)
  return text.split(from).join(to)
}

export interface Ports { https: number, http: number, upstreams: [number, number] }

/** nginx.conf with the operator's literals, the listen ports and every file path moved into `dir`. */
function testConfig (conf: string, dir: string, ports: Ports, extra: Array<[string, string]>): string {
  const file = (name: string): string => path.join(dir, name)
  let c = conf
  c = substitute(c, '/etc/nginx/tls/heart.example.com.crt', file('cert.pem'))
  c = substitute(c, '/etc/nginx/tls/heart.example.com.key', file('key.pem'))
  c = substitute(c, 'heart.example.com', SERVER_NAME)
  c = substitute(c, 'listen 443 ssl;', `listen ${HOST}:${ports.https} ssl;`)
  c = substitute(c, 'listen 80;', `listen ${HOST}:${ports.http};`)
  c = substitute(c, 'server 127.0.0.1:3001 ', `server ${HOST}:${ports.upstreams[0]} `)
  c = substitute(c, 'server 127.0.0.1:3002 ', `server ${HOST}:${ports.upstreams[1]} `)
  c = substitute(c, 'pid /run/nginx.pid;', `pid ${file('nginx.pid')};`)
  c = substitute(c, '/var/log/nginx/error.log', file('error.log'))
  c = substitute(c, '/var/log/nginx/access.log', file('access.log'))
  c = substitute(c, '/var/www/acme', file('acme'))
  c = substitute(c, 'worker_processes auto;', 'worker_processes 2;')
  // Workers as www-data could not enter the private temp dir; without root the line is ignored anyway.
  c = substitute(c, 'user www-data;', process.getuid?.() === 0 ? 'user root;' : '')
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `    ${k}_temp_path ${file(k)};`).join('\n')
  c = substitute(c, 'http {\n', `http {\n${temp}\n`)
  for (const [from, to] of extra) c = substitute(c, from, to)
  return c
}

export interface Answer { status: number, headers: http.IncomingHttpHeaders, body: string }

export interface Stack {
  cert: string
  ports: Ports
  instances: [ServerProcess, ServerProcess]
  /** The private Redis both instances share. */
  redis: RedisServer
  /** Output of `nginx -t` on the test config. */
  check: { status: number | null, output: string }
  testConf: string
  /** wss:// URL of the WebSocket through nginx. */
  wss: string
  /** TLS options of a client that trusts the test certificate and sends SNI, as a mini program does. */
  trust: { ca: string, servername: string }
  accessLog (): Promise<string>
  errorLog (): Promise<string>
  /** One HTTPS request through nginx, on a connection of its own. */
  request (method: string, urlPath: string, headers?: Record<string, string>, body?: string, opts?: { agent?: https.Agent }): Promise<Answer>
  /** Opens the WebSocket through nginx; rejects with Refused on an HTTP answer instead of an upgrade. */
  openWs (tt: { teardown: (fn: () => void) => void }, opts?: WsOptions): Promise<Frames>
}

async function waitForPort (port: number, proc: ChildProcess, ms: number): Promise<void> {
  const ok = await eventually(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error('nginx exited')
    return await new Promise<boolean>((resolve) => {
      const s = net.connect(port, HOST)
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
  }, ms)
  if (!ok) throw new Error(`nginx is not listening on ${port}`)
}

export interface StackOptions {
  /**
   * More literal replacements in the test copy of nginx.conf, each of which must occur: only for
   * a number a test must make small (a limit it proves by reaching it).
   */
  substitutions?: Array<[string, string]>
}

/**
 * Starts a private Redis, two compiled instances on it (TRUST_PROXY=loopback, SHUTDOWN_GRACE_MS
 * 1500, plus `env`), and nginx in front of them with the project's nginx.conf. Everything is
 * stopped and removed when `t` ends.
 */
export async function startStack (t: Test, env: Env = {}, opts: StackOptions = {}): Promise<Stack> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'heart-nginx-'))
  let nginx: ChildProcess | null = null
  t.teardown(async () => {
    if (nginx !== null && nginx.exitCode === null && nginx.signalCode === null) {
      const exited = once(nginx, 'exit')
      // SIGTERM is nginx's fast shutdown (SIGQUIT would wait for every WebSocket to end).
      nginx.kill('SIGTERM')
      const done = await Promise.race([exited.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), TIMEOUT_MS))])
      if (done !== true) nginx.kill('SIGKILL')
    }
    await rm(dir, { recursive: true, force: true })
  })
  const openssl = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${SERVER_NAME}`,
    '-addext', `subjectAltName=DNS:${SERVER_NAME},IP:${HOST}`, '-days', '1',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')
  ], { encoding: 'utf8', timeout: 30000 })
  if (openssl.status !== 0) throw new Error(`openssl failed: ${openssl.stderr}`)
  const cert = await readFile(path.join(dir, 'cert.pem'), 'utf8')

  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  // Both instances share one store, as in production; trusted proxy = loopback, where nginx is.
  const instanceEnv = { REDIS_URL: redis.url, HEART_KEY_PREFIX: uniquePrefix(), TRUST_PROXY: 'loopback', SHUTDOWN_GRACE_MS: '1500', ...env }
  const instances: [ServerProcess, ServerProcess] = [await startServer(t, instanceEnv), await startServer(t, instanceEnv)]

  const ports: Ports = { https: await freePort(), http: await freePort(), upstreams: [instances[0].port, instances[1].port] }
  const testConf = testConfig(await readFile(path.join(ROOT, 'nginx.conf'), 'utf8'), dir, ports, opts.substitutions ?? [])
  const confFile = path.join(dir, 'nginx.conf')
  await writeFile(confFile, testConf)

  const bin = nginxBinary()
  const base = ['-c', confFile, '-p', dir, '-e', path.join(dir, 'startup.log')]
  const checked = spawnSync(bin, ['-t', ...base], { encoding: 'utf8', timeout: 10000 })
  const check = { status: checked.status, output: `${checked.stdout}${checked.stderr}` }
  if (check.status !== 0) throw new Error(`nginx -t failed:\n${check.output}`)

  const proc = spawn(bin, [...base, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] })
  nginx = proc
  let stderr = ''
  proc.stderr?.on('data', (chunk) => { stderr += String(chunk) })
  try {
    await waitForPort(ports.https, proc, 10000)
    await waitForPort(ports.http, proc, 10000)
  } catch (err) {
    throw new Error(`${(err as Error).message}:\n${stderr}\n${await readFile(path.join(dir, 'error.log'), 'utf8').catch(() => '')}`)
  }

  const trust = { ca: cert, servername: SERVER_NAME }
  const wss = `wss://${HOST}:${ports.https}/heart/current`
  return {
    cert,
    ports,
    instances,
    redis,
    check,
    testConf,
    wss,
    trust,
    accessLog: async () => await readFile(path.join(dir, 'access.log'), 'utf8').catch(() => ''),
    errorLog: async () => await readFile(path.join(dir, 'error.log'), 'utf8').catch(() => ''),
    request: async (method, urlPath, headers = {}, body, opts = {}) => await new Promise((resolve, reject) => {
      const req = https.request({ method, host: HOST, port: ports.https, path: urlPath, headers, agent: opts.agent ?? false, timeout: TIMEOUT_MS, ...trust }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk) => { text += chunk })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
      })
      req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath} timed out`)))
      req.on('error', reject)
      req.end(body)
    }),
    openWs: async (tt, opts = {}) => await openWebSocket(tt, wss, { ...opts, tls: trust })
  }
}
