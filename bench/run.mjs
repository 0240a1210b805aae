/**
 * `npm run bench`: our service against the plain ws + ioredis floor in bench/baseline/, on this
 * machine, in one run. Starts a private redis-server (no persistence), then for each scenario and
 * round fresh servers (ours: the compiled `dist/src/server.js`, as production runs it; 1 instance,
 * 2 for push) and a load generator in its own process (bench/load.mjs). Targets alternate
 * ours, baseline, baseline, ours, … (ABBA) so drift on a noisy machine hits both alike. With
 * taskset, servers run on core 0 and the generator and Redis on core 1.
 *
 * Prints a table (ours, baseline, ours/baseline) and writes bench/results/<date>.json.
 *
 * Options (flag or env):
 *   --scenarios=connect,query,push,ingest   BENCH_SCENARIOS (ingest: ours only); `memory` is not in
 *                                    the default list (about 5 minutes of its own): --scenarios=memory
 *   --rounds=2                       BENCH_ROUNDS      runs per scenario and target; figures are medians
 *   --duration=10                    BENCH_DURATION    seconds of load in query and push
 *   --connections=5000               BENCH_CONNECTIONS connect: idle sockets (up to ~19 000: 20 000 open files per process)
 *   --query-connections=200          BENCH_QUERY_CONNECTIONS
 *   --in-flight=4                    BENCH_IN_FLIGHT
 *   --users=100 --subscribers=50     BENCH_USERS, BENCH_SUBSCRIBERS
 *   --rate=500                       BENCH_RATE        readings/s ingested in push
 *   --targets=ours,baseline          BENCH_TARGETS
 *   --no-pin                         BENCH_NO_PIN=1    do not use taskset
 *   --profile                        BENCH_PROFILE=1   one extra run of ours per scenario with the CPU profiler on
 *                                                      during the measured window only (through the inspector,
 *                                                      bench/inspector.mjs; not counted in the table),
 *                                                      summarised with bench/top-functions.mjs
 *   --profile-baseline               BENCH_PROFILE_BASELINE=1  the same for the baseline, to compare with
 *   --memory-connections=19000       BENCH_MEMORY_CONNECTIONS  memory: sockets on one instance
 *   --memory-subscriptions=10        BENCH_MEMORY_SUBSCRIPTIONS memory: subscriptions per socket at the last step
 *                                                      (own user + the next ones, who shared with it); the first
 *                                                      round of each target ends with a heap snapshot
 *                                                      (bench/results/heap/, summarised by bench/heap-summary.mjs)
 *   --ours-env=KEY=VALUE,…           BENCH_OURS_ENV    settings of ours on top of the bench's (a feature
 *                                                      switched off, to measure what it costs); in the JSON
 *   --out=FILE                       BENCH_OUT         where to write the JSON (default bench/results/<date>.json)
 *
 * The push sweep (bench/sweep.mjs has the knee and the chart):
 *   --sweep                          BENCH_SWEEP=1     the push set-up (users × subscribers on 2 instances) at rising
 *                                                      rates, one step per rate per target on the same sockets, both
 *                                                      targets up at once and stepped in turn (order alternating per
 *                                                      rate); prints each step and each target's knee, and writes
 *                                                      <out without .json>-sweep.json and -sweep.svg (default
 *                                                      bench/results/<date>-sweep.json / .svg). Alone it runs only the
 *                                                      sweep and leaves <date>.json alone; with --scenarios=… it runs
 *                                                      those first, then the sweep, and writes both.
 *   --sweep-rates=250,500,1000,2000,4000  BENCH_SWEEP_RATES  readings/s of the steps (--duration s each)
 */
import { spawn, fork, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { topFunctions, formatTop } from './top-functions.mjs'
import { knees, sweepSvg, sweepTable, THRESHOLD_MS, MIN_ACHIEVED } from './sweep.mjs'
import { inspectorUrlOf } from './inspector.mjs'
import { summariseHeap, formatHeapSummary } from './heap-summary.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..')
const resultsDir = path.join(here, 'results')
const profileDir = path.join(resultsDir, 'profiles')
const heapDir = path.join(resultsDir, 'heap')

// ---------------------------------------------------------------- options

const { values: flags } = parseArgs({
  options: {
    scenarios: { type: 'string' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    connections: { type: 'string' },
    'memory-connections': { type: 'string' },
    'memory-subscriptions': { type: 'string' },
    'query-connections': { type: 'string' },
    'in-flight': { type: 'string' },
    users: { type: 'string' },
    subscribers: { type: 'string' },
    rate: { type: 'string' },
    targets: { type: 'string' },
    'no-pin': { type: 'boolean' },
    profile: { type: 'boolean' },
    'profile-baseline': { type: 'boolean' },
    out: { type: 'string' },
    sweep: { type: 'boolean' },
    'sweep-rates': { type: 'string' },
    'ours-env': { type: 'string' },
    help: { type: 'boolean', short: 'h' }
  }
})
if (flags.help) {
  process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] + '*/\n')
  process.exit(0)
}

const env = process.env
function intOption (flag, envName, dflt, min, max) {
  const raw = flags[flag] ?? env[envName]
  const v = raw === undefined ? dflt : Number(raw)
  if (!Number.isInteger(v) || v < min || v > max) throw new Error(`--${flag} / ${envName} must be an integer in [${min}, ${max}], got ${raw}`)
  return v
}
function listOption (flag, envName, dflt, allowed) {
  const list = (flags[flag] ?? env[envName] ?? dflt).split(',').map((s) => s.trim()).filter(Boolean)
  for (const x of list) if (!allowed.includes(x)) throw new Error(`--${flag} / ${envName}: unknown "${x}" (one of ${allowed.join(', ')})`)
  return list
}

const sweepWanted = flags.sweep ?? env.BENCH_SWEEP === '1'
const opts = {
  // --sweep alone: only the sweep.
  scenarios: listOption('scenarios', 'BENCH_SCENARIOS', sweepWanted ? '' : 'connect,query,push,ingest', ['connect', 'query', 'push', 'ingest', 'memory']),
  targets: listOption('targets', 'BENCH_TARGETS', 'ours,baseline', ['ours', 'baseline']),
  rounds: intOption('rounds', 'BENCH_ROUNDS', 2, 1, 20),
  durationSeconds: intOption('duration', 'BENCH_DURATION', 10, 1, 120),
  connections: intOption('connections', 'BENCH_CONNECTIONS', 5000, 1, 19500),
  memoryConnections: intOption('memory-connections', 'BENCH_MEMORY_CONNECTIONS', 19000, 10, 19500),
  memorySubscriptions: intOption('memory-subscriptions', 'BENCH_MEMORY_SUBSCRIPTIONS', 10, 1, 20),
  queryConnections: intOption('query-connections', 'BENCH_QUERY_CONNECTIONS', 200, 1, 10000),
  inFlight: intOption('in-flight', 'BENCH_IN_FLIGHT', 4, 1, 1000),
  users: intOption('users', 'BENCH_USERS', 100, 1, 10000),
  subscribers: intOption('subscribers', 'BENCH_SUBSCRIBERS', 50, 1, 10000),
  rate: intOption('rate', 'BENCH_RATE', 500, 1, 100000),
  pin: !(flags['no-pin'] ?? env.BENCH_NO_PIN === '1'),
  profile: flags.profile ?? env.BENCH_PROFILE === '1',
  profileBaseline: flags['profile-baseline'] ?? env.BENCH_PROFILE_BASELINE === '1',
  out: flags.out ?? env.BENCH_OUT,
  sweep: sweepWanted,
  sweepRates: rateList(flags['sweep-rates'] ?? env.BENCH_SWEEP_RATES ?? '250,500,1000,2000,4000'),
  oursEnv: settingList(flags['ours-env'] ?? env.BENCH_OURS_ENV ?? '')
}
/** KEY=VALUE,KEY=VALUE: settings of ours on top of the bench's, to measure a feature switched off. */
function settingList (raw) {
  const settings = {}
  for (const item of raw.split(',').map((x) => x.trim()).filter(Boolean)) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(item)
    if (m === null) throw new Error(`--ours-env / BENCH_OURS_ENV must be KEY=VALUE items joined by commas, got "${item}"`)
    settings[m[1]] = m[2]
  }
  return settings
}
function rateList (raw) {
  const rates = raw.split(',').map((x) => x.trim()).filter(Boolean).map(Number)
  if (rates.length === 0 || rates.some((r) => !Number.isInteger(r) || r < 1 || r > 100000)) throw new Error(`--sweep-rates / BENCH_SWEEP_RATES must be integers in [1, 100000], got ${raw}`)
  return [...new Set(rates)].sort((a, b) => a - b)
}
if (opts.users * opts.subscribers > 19500) throw new Error('push: users × subscribers must stay below ~19 500 (open files of the generator)')

// ---------------------------------------------------------------- machine

const SECRET = 'bench-secret-bench-secret-bench-secret-0123456789'
const API_KEY = 'bench-ingest-key'
/** memory: how long the server sits idle before RSS is read once more. */
const MEMORY_QUIET_S = 20
const PREFIX = 'heart:'
const clkTck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

function canPin () {
  if (os.cpus().length < 2) return false
  try {
    execFileSync('taskset', ['-c', '1', 'true'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}
const pinned = opts.pin && canPin()
const SERVER_CORE = '0'
const LOAD_CORE = '1'

function machine () {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown'
  let redisVersion = 'unknown'
  try { redisVersion = /v=(\S+)/.exec(execFileSync('redis-server', ['--version']).toString())?.[1] ?? redisVersion } catch {}
  let openFiles = 'unknown'
  try { openFiles = execFileSync('sh', ['-c', 'ulimit -n']).toString().trim() } catch {}
  let commit = 'unknown'
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim()
    if (execFileSync('git', ['status', '--porcelain', '--', 'src', 'plugins', 'routes'], { cwd: root }).toString().trim() !== '') commit += ' + uncommitted changes in src/plugins/routes'
  } catch {}
  return {
    code: commit,
    cores: os.cpus().length,
    model,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30 * 10) / 10,
    node: process.version,
    redis: redisVersion,
    kernel: os.release(),
    openFiles,
    pinning: pinned ? `taskset: servers on core ${SERVER_CORE}; load generator and Redis on core ${LOAD_CORE}` : 'none (taskset unavailable, fewer than 2 cores, or --no-pin): every process shares every core'
  }
}

// ---------------------------------------------------------------- processes

const children = new Set()
function pinnedSpawn (core, cmd, args, options) {
  const child = pinned ? spawn('taskset', ['-c', core, cmd, ...args], options) : spawn(cmd, args, options)
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}
function killAll () {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
}
process.on('exit', killAll)
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130) })

async function freePort () {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Keeps the last lines a child printed, to show if it dies. */
function tail (child) {
  const lines = []
  const keep = (buf) => {
    for (const l of buf.toString().split('\n')) if (l !== '') lines.push(l)
    if (lines.length > 40) lines.splice(0, lines.length - 40)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  return lines
}

async function startRedis () {
  const port = await freePort()
  const proc = pinnedSpawn(LOAD_CORE, 'redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--daemonize', 'no', '--loglevel', 'warning', '--maxclients', '10000'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  const out = tail(proc)
  const deadline = Date.now() + 10000
  for (;;) {
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    probe.on('error', () => {})
    try {
      await probe.connect()
      await probe.ping()
      probe.disconnect()
      return { proc, port, url: `redis://127.0.0.1:${port}` }
    } catch (err) {
      probe.disconnect()
      if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`redis-server did not start: ${err.message}\n${out.join('\n')}`)
      await sleep(50)
    }
  }
}

async function waitHealthy (port, proc, out) {
  const deadline = Date.now() + 20000
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}:\n${out.join('\n')}`)
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`)
      if (res.status === 200) return
    } catch {}
    if (Date.now() > deadline) throw new Error(`server on ${port} not healthy after 20 s:\n${out.join('\n')}`)
    await sleep(50)
  }
}

/** Starts `instances` servers of a target; ours is the compiled service with the bench's limits. */
async function startServers (target, instances, redisUrl, { profile = false, snapshotDir } = {}) {
  const servers = []
  // Profiled: the inspector on a port of its own; the load generator runs the profiler over the measured window only.
  // A heap snapshot: written by the server itself on SIGUSR2 (Node's own --heapsnapshot-signal), nothing loaded until then.
  const nodeArgs = [
    ...(profile ? ['--inspect=127.0.0.1:0'] : []),
    ...(snapshotDir !== undefined ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] : [])
  ]
  for (let i = 0; i < instances; i++) {
    const port = await freePort()
    const common = { PORT: String(port), HOST: '127.0.0.1', REDIS_URL: redisUrl, JWT_SECRET: SECRET, INGEST_API_KEYS: API_KEY, HEART_KEY_PREFIX: PREFIX }
    let proc
    if (target === 'ours') {
      proc = pinnedSpawn(SERVER_CORE, process.execPath, [...nodeArgs, path.join(root, 'dist/src/server.js')], {
        cwd: root,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          PATH: env.PATH,
          ...common,
          NODE_ENV: 'production',
          LOG_LEVEL: 'warn',
          SHUTDOWN_GRACE_MS: '0',
          // The defaults protect production from floods; the bench is a deliberate flood.
          MESSAGE_RATE_LIMIT: '1000000',
          MAX_CONNECTIONS_PER_USER: '1000000',
          UPGRADE_RATE_LIMIT: '1000000',
          ...opts.oursEnv
        }
      })
    } else {
      proc = pinnedSpawn(SERVER_CORE, process.execPath, [...nodeArgs, path.join(here, 'baseline/server.mjs')], {
        cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: env.PATH, ...common }
      })
    }
    const out = tail(proc)
    servers.push({ proc, port, out, url: `http://127.0.0.1:${port}` })
  }
  await Promise.all(servers.map((s) => waitHealthy(s.port, s.proc, s.out)))
  if (profile) {
    for (const s of servers) {
      s.inspector = s.out.map(inspectorUrlOf).find((u) => u !== null)
      if (s.inspector === undefined) throw new Error(`no inspector URL in the output of a profiled server:\n${s.out.join('\n')}`)
    }
  }
  return servers
}

async function stopServers (servers) {
  await Promise.all(servers.map(async ({ proc }) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill('SIGTERM')
    // A profiled server writes its profile on exit: give it time.
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15000)
    await exited
    clearTimeout(timer)
  }))
}

/** The load generator, in its own process, on the load core. */
function forkLoad (config) {
  const child = fork(path.join(here, 'load.mjs'), [JSON.stringify(config)], {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    ...(pinned ? { execPath: 'taskset', execArgv: ['-c', LOAD_CORE, process.execPath, '--max-old-space-size=4096'] } : { execArgv: ['--max-old-space-size=4096'] })
  })
  children.add(child)
  return child
}

/** What every generator is told about the servers it loads and the machine. */
function generatorContext (servers, redis) {
  return {
    urls: servers.map((s) => s.url),
    pids: servers.map((s) => s.proc.pid),
    redisPid: redis.proc.pid,
    redisUrl: redis.url,
    secret: SECRET,
    apiKey: API_KEY,
    prefix: PREFIX,
    clkTck,
    pinned,
    serverCore: Number(SERVER_CORE),
    loadCore: Number(LOAD_CORE)
  }
}

function runLoad (config, timeoutMs) {
  return new Promise((resolve, reject) => {
    const child = forkLoad(config)
    let answer = null
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`load generator did not finish in ${timeoutMs / 1000} s`)) }, timeoutMs)
    child.on('message', (m) => { answer = m })
    child.once('exit', (code) => {
      children.delete(child)
      clearTimeout(timer)
      if (answer === null) reject(new Error(`load generator exited with ${code} and no result`))
      else if (!answer.ok) reject(new Error(answer.error))
      else resolve(answer.result)
    })
  })
}

// ---------------------------------------------------------------- scenarios

const durationMs = opts.durationSeconds * 1000
const scenarioSetup = {
  connect: {
    instances: 1,
    config: { connections: opts.connections, concurrency: 200, openDeadlineMs: 180000, settleMs: 2000 },
    timeoutMs: 300000
  },
  query: {
    instances: 1,
    config: { connections: opts.queryConnections, inFlight: opts.inFlight, concurrency: 100, warmupMs: 2000, durationMs },
    timeoutMs: durationMs + 120000
  },
  // Ours only: the baseline has no device keys, publish frames or alert rules.
  ingest: {
    instances: 1,
    oursOnly: true,
    config: { users: 200, rate: Math.min(opts.rate * 2, 1000), durationMs },
    timeoutMs: 5 * durationMs + 180000
  },
  memory: {
    instances: 1,
    config: { connections: opts.memoryConnections, subscriptions: opts.memorySubscriptions, concurrency: 200, openDeadlineMs: 240000, settleMs: 3000, quietMs: MEMORY_QUIET_S * 1000 },
    timeoutMs: 900000
  },
  push: {
    instances: 2,
    config: { users: opts.users, subscribers: opts.subscribers, rate: opts.rate, concurrency: 200, durationMs, drainMs: 60000, quietMs: 3000 },
    timeoutMs: durationMs + 240000
  }
}

async function runOne (scenario, target, redis, { profile = false, snapshot = false } = {}) {
  const setup = scenarioSetup[scenario]
  await redis.client.flushall()
  const spawnedAt = Date.now()
  const snapshotDir = snapshot ? heapDir : undefined
  if (snapshotDir !== undefined) mkdirSync(snapshotDir, { recursive: true })
  const servers = await startServers(target, setup.instances, redis.url, { profile, snapshotDir })
  const t0 = Date.now()
  try {
    const result = await runLoad({
      ...setup.config,
      scenario,
      ...generatorContext(servers, redis),
      target,
      ...(profile ? { inspect: servers.map((s) => s.inspector), profileDir } : {}),
      ...(snapshotDir !== undefined ? { snapshotDir } : {})
    }, setup.timeoutMs)
    for (const s of servers) {
      if (s.proc.exitCode !== null || s.proc.signalCode !== null) throw new Error(`a ${target} server died during ${scenario}:\n${s.out.join('\n')}`)
    }
    result.wallSeconds = (Date.now() - t0) / 1000
    result.spawnedAtEpochMs = spawnedAt
    return result
  } finally {
    await stopServers(servers)
  }
}

// ---------------------------------------------------------------- figures and table

const get = (obj, dotted) => dotted.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj)
function median (xs) {
  const a = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((p, q) => p - q)
  if (a.length === 0) return null
  const m = a.length >> 1
  return a.length % 2 === 1 ? a[m] : (a[m - 1] + a[m]) / 2
}

/** [label, path in a result, digits, how it is summed over rounds] */
const FIGURES = {
  connect: [
    ['sockets opened', 'opened', 0, 'min'],
    ['failures', 'failures', 0, 'max'],
    ['time to open (s)', 'openSeconds', 2],
    ['opens/s', 'opensPerSecond', 0],
    ['server RSS per socket (KiB)', 'rssPerConnectionKiB', 2],
    ['server RSS before (MiB)', 'rssBeforeKiB', 1, 'median', 1 / 1024],
    ['server CPU per open (µs)', 'serverCpuPerOpenUs', 0],
    ['generator CPU (% of core 1)', 'cpu.generatorCpuPercent', 0],
    ['other processes on core 0 (%)', 'cpu.othersOnServerCorePercent', 0],
    ['other processes on core 1 (%)', 'cpu.othersOnLoadCorePercent', 0]
  ],
  query: [
    ['round trips/s', 'roundTripsPerSecond', 0],
    ['latency p50 (ms)', 'latencyMs.p50', 2],
    ['latency p99 (ms)', 'latencyMs.p99', 2],
    ['server CPU per round trip (µs)', 'serverCpuPerRoundTripUs', 2],
    ['server CPU (% of core 0)', 'cpu.serverCpuPercent', 0],
    ['generator CPU (% of core 1)', 'cpu.generatorCpuPercent', 0],
    ['Redis CPU (% of core 1)', 'cpu.redisCpuPercent', 0],
    ['other processes on core 0 (%)', 'cpu.othersOnServerCorePercent', 0],
    ['other processes on core 1 (%)', 'cpu.othersOnLoadCorePercent', 0],
    ['wrong replies', 'wrongReplies', 0, 'max'],
    ['unanswered at end', 'unanswered', 0, 'max']
  ],
  memory: [
    ['sockets open at the end', 'opened', 0, 'min'],
    ['subscriptions made', 'subscribed', 0, 'min'],
    ['subscribe failures', 'subscribeFailures', 0, 'max'],
    ['server RSS before (MiB)', 'rssKiB.beforeKiB', 1, 'median', 1 / 1024],
    ['RSS per socket, idle (KiB)', 'rssPerSocketKiB.idle', 2],
    ['RSS per socket, 1 subscription (KiB)', 'rssPerSocketKiB.one', 2],
    ['RSS per socket, all subscriptions (KiB)', 'rssPerSocketKiB.many', 2],
    [`the same after ${MEMORY_QUIET_S} s idle (KiB)`, 'rssPerSocketKiB.quiet', 2],
    ['whole live heap / sockets (B, snapshot, round 1)', 'heap.perSocketLiveBytes', 0],
    ['server RSS at the end (MiB)', 'rssKiB.manyKiB', 1, 'median', 1 / 1024]
  ],
  ingest: [
    ['HTTP, service key: readings/s', 'service.readingsPerSecond', 0],
    ['  server CPU per reading (µs)', 'service.serverCpuPerReadingUs', 1],
    ['  Redis CPU per reading (µs)', 'service.redisCpuPerReadingUs', 1],
    ['HTTP, device key: readings/s', 'device.readingsPerSecond', 0],
    ['  server CPU per reading (µs)', 'device.serverCpuPerReadingUs', 1],
    ['  Redis CPU per reading (µs)', 'device.redisCpuPerReadingUs', 1],
    ['publish on the socket: readings/s', 'publish.readingsPerSecond', 0],
    ['  server CPU per reading (µs)', 'publish.serverCpuPerReadingUs', 1],
    ['  Redis CPU per reading (µs)', 'publish.redisCpuPerReadingUs', 1],
    ['publish, alert rules on: readings/s', 'publishWithRules.readingsPerSecond', 0],
    ['  server CPU per reading (µs)', 'publishWithRules.serverCpuPerReadingUs', 1],
    ['  Redis CPU per reading (µs)', 'publishWithRules.redisCpuPerReadingUs', 1],
    ['publish, no ts, no rules (reference): readings/s', 'reference.readingsPerSecond', 0],
    ['  server CPU per reading (µs)', 'reference.serverCpuPerReadingUs', 1],
    ['  Redis CPU per reading (µs)', 'reference.redisCpuPerReadingUs', 1],
    ['alert rules: added cost (server+Redis, %)', 'rulesCostPercent', 1],
    ['duplicate check + alert rules: added cost (server+Redis, %)', 'checkAndRulesCostPercent', 1],
    ['failed readings (all four)', 'failedTotal', 0, 'max'],
    ['failed readings (reference)', 'reference.failed', 0, 'max']
  ],
  push: [
    ['deliveries/s', 'deliveriesPerSecond', 0],
    ['ingest→frame p50 (ms, Date.now)', 'latencyMs.p50', 2],
    ['ingest→frame p99 (ms, Date.now)', 'latencyMs.p99', 2],
    ['ingest→frame max (ms, Date.now)', 'latencyMs.max', 2],
    ['ingest→frame p50 (ms, hr clock)', 'latencyHrMs.p50', 3],
    ['ingest→frame p99 (ms, hr clock)', 'latencyHrMs.p99', 3],
    ['ingest→frame max (ms, hr clock)', 'latencyHrMs.max', 3],
    ['lost deliveries', 'lost', 0, 'max'],
    ['duplicated deliveries', 'duplicates', 0, 'max'],
    ['ingest errors', 'ingestErrors', 0, 'max'],
    ['server CPU per delivery (µs, 2 inst.)', 'serverCpuPerDeliveryUs', 2],
    ['server CPU (% of core 0, 2 inst.)', 'cpu.serverCpuPercent', 0],
    ['ingest HTTP p50 (ms)', 'ingestHttpMs.p50', 2],
    ['generator CPU (% of core 1)', 'cpu.generatorCpuPercent', 0],
    ['Redis CPU (% of core 1)', 'cpu.redisCpuPercent', 0],
    ['other processes on core 0 (%)', 'cpu.othersOnServerCorePercent', 0],
    ['other processes on core 1 (%)', 'cpu.othersOnLoadCorePercent', 0]
  ]
}

function summarise (scenario, runs) {
  const rows = []
  for (const [label, p, digits, how = 'median', scale = 1] of FIGURES[scenario]) {
    const row = { label, digits }
    for (const target of ['ours', 'baseline']) {
      const vals = (runs[target] ?? []).filter((r) => !r.error).map((r) => get(r, p)).filter((v) => typeof v === 'number')
      const v = vals.length === 0 ? null : how === 'max' ? Math.max(...vals) : how === 'min' ? Math.min(...vals) : median(vals)
      row[target] = v === null ? null : v * scale
    }
    row.ratio = row.ours != null && row.baseline != null && row.baseline !== 0 ? row.ours / row.baseline : null
    rows.push(row)
  }
  return rows
}

function fmt (v, digits) {
  if (v === null || v === undefined) return '-'
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function table (summary) {
  const lines = []
  // The label column is as wide as the longest label.
  const w = [Math.max(40, ...Object.values(summary).flatMap((info) => info.rows.map((r) => r.label.length + 3))), 14, 14, 8]
  const pad = (s, n, left = false) => (left ? s.padEnd(n) : s.padStart(n))
  lines.push(pad('figure', w[0], true) + pad('ours', w[1]) + pad('baseline', w[2]) + pad('ratio', w[3] + 2))
  for (const [scenario, info] of Object.entries(summary)) {
    lines.push('')
    lines.push(`${scenario} — ${info.describe}`)
    for (const r of info.rows) {
      lines.push(pad('  ' + r.label, w[0], true) + pad(fmt(r.ours, r.digits), w[1]) + pad(fmt(r.baseline, r.digits), w[2]) + pad(r.ratio === null ? '-' : r.ratio.toFixed(2) + '×', w[3] + 2))
    }
    for (const e of info.errors) lines.push(`  ! ${e}`)
  }
  return lines.join('\n')
}

function describe (scenario) {
  if (scenario === 'memory') return `${opts.memoryConnections} sockets on 1 instance, then 1 and ${opts.memorySubscriptions} subscriptions each (RSS less the RSS before, per socket)`
  if (scenario === 'connect') return `${opts.connections} idle authenticated sockets, 1 instance`
  if (scenario === 'ingest') return `200 users, ${Math.min(opts.rate * 2, 1000)} readings/s for ${opts.durationSeconds} s each way, 1 instance (ours only)`
  if (scenario === 'query') return `${opts.queryConnections} sockets × ${opts.inFlight} in flight, original text get, ${opts.durationSeconds} s after 2 s warm-up, 1 instance`
  return `${opts.users} users × ${opts.subscribers} subscribers = ${opts.users * opts.subscribers} sockets over 2 instances, ${opts.rate} readings/s for ${opts.durationSeconds} s`
}

// ---------------------------------------------------------------- sweep

const SWEEP_PAUSE_MS = 2000
const SWEEP_DRAIN_MS = 20000
const SWEEP_QUIET_CAP_MS = 20000

function cpuTicks (pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12])
}

/**
 * Waits until the servers together use under 5 % of a core over 500 ms (at most `capMs`), so a
 * step past the knee whose backlog outlived its drain does not run into the next step; seconds waited.
 */
async function serversQuiet (pids, capMs) {
  const t0 = Date.now()
  for (;;) {
    const a = pids.reduce((sum, p) => sum + cpuTicks(p), 0)
    await sleep(500)
    const b = pids.reduce((sum, p) => sum + cpuTicks(p), 0)
    if ((b - a) / clkTck < 0.025 || Date.now() - t0 > capMs) return (Date.now() - t0) / 1000
  }
}

/** A generator kept alive across steps: `next(pred)` waits for its next message that matches. */
function steppedGenerator (config) {
  const child = forkLoad(config)
  const inbox = []
  const waiting = new Set()
  let exitCode
  const settle = () => {
    for (const w of waiting) {
      const i = inbox.findIndex(w.pred)
      if (i !== -1) {
        const [m] = inbox.splice(i, 1)
        waiting.delete(w)
        clearTimeout(w.timer)
        if (m.ok === false) w.reject(new Error(m.error))
        else w.resolve(m)
      } else if (exitCode !== undefined) {
        waiting.delete(w)
        clearTimeout(w.timer)
        w.reject(new Error(`load generator exited with ${exitCode} while waiting for ${w.what}`))
      }
    }
  }
  child.on('message', (m) => { inbox.push(m); settle() })
  child.once('exit', (code, signal) => { children.delete(child); exitCode = code ?? signal; settle() })
  // A failure report answers whatever is awaited.
  const next = (pred, timeoutMs, what) => new Promise((resolve, reject) => {
    const w = { pred: (m) => m.ok === false || pred(m), resolve, reject, what }
    w.timer = setTimeout(() => {
      waiting.delete(w)
      child.kill('SIGKILL')
      reject(new Error(`load generator gave no ${what} in ${timeoutMs / 1000} s`))
    }, timeoutMs)
    waiting.add(w)
    settle()
  })
  return { child, next, send: (m) => child.send(m) }
}

/**
 * Both targets up at once (2 instances each; users of their own, so neither hears the other's
 * readings), each with its generator holding its subscribers open. For each rate, each target
 * in turn — ours first at the first rate, the baseline first at the next, and so on — runs one
 * step while the other's servers and sockets sit idle.
 */
async function runSweep (redis) {
  const started = Date.now()
  await redis.client.flushall()
  const rates = opts.sweepRates
  const stepTimeoutMs = durationMs + SWEEP_DRAIN_MS + 60000
  const rigs = {}
  const steps = Object.fromEntries(opts.targets.map((t) => [t, []]))
  const order = []
  const fail = (target, i, err) => {
    for (let j = i; j < rates.length; j++) if (steps[target][j] === undefined) steps[target][j] = { rate: rates[j], error: err.message }
    process.stdout.write(`FAILED: ${err.message}\n`)
    rigs[target]?.gen?.child.kill('SIGKILL')
    delete rigs[target]
  }
  try {
    for (const target of opts.targets) {
      process.stdout.write(`sweep: ${target}, opening ${opts.users * opts.subscribers} subscribers … `)
      const t0 = Date.now()
      try {
        const servers = await startServers(target, 2, redis.url)
        rigs[target] = { servers }
        rigs[target].gen = steppedGenerator({
          scenario: 'sweep',
          stepped: true,
          rates,
          users: opts.users,
          subscribers: opts.subscribers,
          userPrefix: `s${target[0]}`,
          concurrency: 200,
          durationMs,
          drainMs: SWEEP_DRAIN_MS,
          quietMs: 3000,
          pauseMs: SWEEP_PAUSE_MS,
          ...generatorContext(servers, redis)
        })
        await rigs[target].gen.next((m) => m.ready === true, 180000, 'ready')
        process.stdout.write(`open (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`)
      } catch (err) {
        fail(target, 0, err)
      }
    }
    for (const [i, rate] of rates.entries()) {
      const turn = i % 2 === 0 ? opts.targets : [...opts.targets].reverse()
      order.push(turn)
      for (const target of turn) {
        const rig = rigs[target]
        if (rig === undefined) continue
        await sleep(SWEEP_PAUSE_MS)
        const waited = await serversQuiet(Object.values(rigs).flatMap((r) => r.servers.filter((s) => s.proc.exitCode === null).map((s) => s.proc.pid)), SWEEP_QUIET_CAP_MS)
        process.stdout.write(`sweep ${rate}/s: ${target} … `)
        const t0 = Date.now()
        try {
          rig.gen.send({ step: i })
          const { result } = await rig.gen.next((m) => m.step === i, stepTimeoutMs, `result of step ${i}`)
          result.waitedForQuietSeconds = waited
          for (const s of rig.servers) {
            if (s.proc.exitCode !== null || s.proc.signalCode !== null) throw new Error(`a ${target} server died during the sweep at ${rate}/s:\n${s.out.join('\n')}`)
          }
          steps[target][i] = result
          process.stdout.write(`${sweepBrief(result)} (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`)
        } catch (err) {
          fail(target, i, err)
        }
      }
    }
    // The generators' last word: frames that came after their step's drain.
    for (const [target, rig] of Object.entries(rigs)) {
      try {
        const { result } = await rig.gen.next((m) => m.ok === true, 60000, 'final result')
        for (const [i, s] of result.steps.entries()) Object.assign(steps[target][i], { deliveriesAfterDrain: s.deliveriesAfterDrain, duplicatesAfterDrain: s.duplicatesAfterDrain })
      } catch (err) {
        process.stdout.write(`sweep: ${target}'s generator did not finish: ${err.message}\n`)
      }
    }
  } finally {
    await Promise.all(Object.values(rigs).map((r) => stopServers(r.servers)))
  }
  const sweep = {
    rates,
    users: opts.users,
    subscribers: opts.subscribers,
    sockets: opts.users * opts.subscribers,
    instances: 2,
    durationSeconds: opts.durationSeconds,
    thresholdMs: THRESHOLD_MS,
    minAchieved: MIN_ACHIEVED,
    order,
    targets: steps
  }
  sweep.knees = knees(sweep)
  sweep.elapsedSeconds = (Date.now() - started) / 1000
  return sweep
}

function sweepBrief (r) {
  return `${Math.round(r.readingsPerSecond)} readings/s, ${Math.round(r.deliveredPerSecond)} deliveries/s, p99 ${r.latencyMs.p99?.toFixed(1)} ms, lost ${r.lost}, dup ${r.duplicates}, ` +
    `server ${r.cpu.serverCpuPercent.toFixed(0)} %, generator ${r.cpu.generatorCpuPercent.toFixed(0)} %` +
    (r.waitedForQuietSeconds > 1 ? `, after ${r.waitedForQuietSeconds.toFixed(1)} s waiting for idle servers` : '') +
    (r.reopenedBefore > 0 ? `, ${r.reopenedBefore} sockets reopened before` : '')
}

/** Prints the sweep and writes <results base>-sweep.json and -sweep.svg next to the run's JSON. */
function reportSweep (sweep, mach) {
  if (sweep === null) return
  const note = `${sweep.users} users × ${sweep.subscribers} subscribers on 2 instances, ${sweep.durationSeconds} s per step; ${mach.cores} cores, Node ${mach.node}; ${new Date().toISOString().slice(0, 10)}`
  process.stdout.write(`\nsweep — ${note}\n${sweepTable(sweep)}\n`)
  process.stdout.write('readings/s and deliveries/s: acknowledged and delivered, per second between the first and the last of them; CPU over ingest and drain; lost: deliveries of acknowledged readings not in by the end of the drain; others: the most other processes took from either core.\n')
  const date = new Date().toISOString().slice(0, 10)
  const base = (opts.out === undefined ? path.join(resultsDir, `${date}.json`) : path.resolve(opts.out)).replace(/\.json$/, '')
  mkdirSync(path.dirname(base), { recursive: true })
  writeFileSync(`${base}-sweep.json`, JSON.stringify({ date: new Date().toISOString(), machine: mach, options: opts, sweep }, null, 2) + '\n')
  writeFileSync(`${base}-sweep.svg`, sweepSvg({ ...sweep, note }))
  process.stdout.write(`\nwritten: ${path.relative(root, base)}-sweep.json and -sweep.svg (sweep ${sweep.elapsedSeconds.toFixed(0)} s)\n`)
}

// ---------------------------------------------------------------- heap snapshots

/**
 * Classes whose retained size per socket the memory run reports whatever their rank: what a socket
 * is made of in either server, and what only ours has (the session, its subscriptions, the
 * handshake's request and reply, which Fastify builds as _Request and _Reply).
 */
const HEAP_CLASSES = ['WebSocket', 'Receiver', 'Sender', 'Socket', 'HeartSession', 'Subscription', 'IncomingMessage', 'ServerResponse', '_Request', '_Reply']

/**
 * The snapshot a memory run took, summarised per socket with retained sizes from its dominator tree
 * (then deleted: hundreds of MB; kept with BENCH_KEEP_SNAPSHOTS=1). The live heap per socket goes
 * onto the result, for the table.
 */
async function summariseSnapshot (result) {
  const heap = await summariseHeap(result.snapshot.file, { top: 20, perCount: result.connections, classes: HEAP_CLASSES })
  result.heap = { perSocketLiveBytes: heap.totalSelfBytes }
  heap.file = path.relative(root, result.snapshot.file)
  if (env.BENCH_KEEP_SNAPSHOTS !== '1') rmSync(result.snapshot.file, { force: true })
  return heap
}

function heapText (target, heap) {
  return `heap of ${target} after the memory run's last step (${heap.file}):\n${formatHeapSummary(heap)}`
}

// ---------------------------------------------------------------- main

async function main () {
  if (opts.targets.includes('ours') && !existsSync(path.join(root, 'dist/src/server.js'))) {
    throw new Error('dist/src/server.js is missing: run `npm run build` (npm run bench does)')
  }
  const started = Date.now()
  const mach = machine()
  process.stdout.write(`heart-gateway bench — ${mach.cores} cores, ${mach.model}, Node ${mach.node}, Redis ${mach.redis}\n`)
  process.stdout.write(`pinning: ${mach.pinning}\n`)
  if (Object.keys(opts.oursEnv).length > 0) process.stdout.write(`ours runs with ${Object.entries(opts.oursEnv).map(([k, v]) => `${k}=${v}`).join(' ')} on top of the bench's settings\n`)
  if (opts.scenarios.length > 0) process.stdout.write(`scenarios: ${opts.scenarios.join(', ')}; ${opts.rounds} round(s) each, targets alternating ${opts.targets.join('/')} (ABBA)\n`)
  if (opts.sweep) process.stdout.write(`sweep: push at ${opts.sweepRates.join(', ')} readings/s, ${opts.durationSeconds} s each, ${opts.users * opts.subscribers} subscribers per target, ${opts.targets.join('/')} in turn\n`)
  process.stdout.write('\n')

  const redisServer = await startRedis()
  const redis = { ...redisServer, client: new Redis(redisServer.url) }
  const runs = {}
  const errors = {}
  const profiles = {}
  const heaps = {}
  const wanted = [opts.profile && 'ours', opts.profileBaseline && 'baseline'].filter((t) => t && opts.targets.includes(t))
  let sweep = null
  try {
    for (const scenario of opts.scenarios) {
      runs[scenario] = { ours: [], baseline: [] }
      errors[scenario] = []
      for (let round = 0; round < opts.rounds; round++) {
        const order = round % 2 === 0 ? opts.targets : [...opts.targets].reverse()
        for (const target of order) {
          if (scenarioSetup[scenario].oursOnly && target !== 'ours') continue
          process.stdout.write(`${scenario} round ${round + 1}/${opts.rounds}: ${target} … `)
          const t0 = Date.now()
          try {
            const result = await runOne(scenario, target, redis, { snapshot: scenario === 'memory' && round === 0 })
            runs[scenario][target].push(result)
            process.stdout.write(`${brief(scenario, result)} (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`)
            if (result.snapshot != null) {
              try {
                heaps[target] = await summariseSnapshot(result)
              } catch (err) {
                process.stdout.write(`  heap snapshot not summarised (kept: ${path.relative(root, result.snapshot.file)}): ${err.message}\n`)
              }
            }
          } catch (err) {
            runs[scenario][target].push({ error: err.message })
            errors[scenario].push(`${target} round ${round + 1}: ${err.message.split('\n')[0]}`)
            process.stdout.write(`FAILED: ${err.message}\n`)
          }
        }
      }
      for (const t of wanted) {
        if (scenarioSetup[scenario].oursOnly && t !== 'ours') continue
        for (const p of await profileScenario(scenario, redis, t) ?? []) profiles[`${t} (${scenario}${p.label === scenario ? '' : `: ${p.label}`})`] = p
      }
    }
    if (opts.sweep) sweep = await runSweep(redis)
  } finally {
    redis.client.disconnect()
    redis.proc.kill('SIGKILL')
  }
  if (opts.scenarios.length === 0) return reportSweep(sweep, mach)

  const summary = {}
  for (const scenario of opts.scenarios) {
    summary[scenario] = { describe: describe(scenario), rows: summarise(scenario, runs[scenario]), errors: errors[scenario] }
  }
  const out = table(summary)
  process.stdout.write('\n' + out + '\n')
  process.stdout.write(`\nratio = ours / baseline; each figure is the median over ${opts.rounds} round(s) (counts of failures, lost, duplicated: the worst round).\n`)
  process.stdout.write(`code measured: ${mach.code}\n`)
  process.stdout.write(`machine: ${mach.cores} cores, ${mach.model}, ${mach.memoryGiB} GiB, Node ${mach.node}, Redis ${mach.redis}, Linux ${mach.kernel}; ${mach.pinning}\n`)
  for (const [target, heap] of Object.entries(heaps)) process.stdout.write(`\n${heapText(target, heap)}\n`)
  for (const [target, profile] of Object.entries(profiles)) {
    process.stdout.write(`\nprofile of ${target}: ${profile.files.map((f) => path.relative(root, f)).join(', ')}\n${profile.text}\n`)
  }

  const date = new Date().toISOString().slice(0, 10)
  mkdirSync(resultsDir, { recursive: true })
  const file = opts.out === undefined ? path.join(resultsDir, `${date}.json`) : path.resolve(opts.out)
  writeFileSync(file, JSON.stringify({
    date: new Date().toISOString(),
    elapsedSeconds: (Date.now() - started) / 1000,
    machine: mach,
    options: opts,
    summary,
    runs,
    heaps,
    profiles: Object.fromEntries(Object.entries(profiles).map(([t, p]) => [t, { files: p.files.map((f) => path.relative(root, f)), top: p.top }]))
  }, null, 2) + '\n')
  process.stdout.write(`\nwritten: ${path.relative(root, file)} (whole run ${((Date.now() - started) / 1000).toFixed(0)} s)\n`)
  if (opts.sweep) reportSweep(sweep, mach)
}

function brief (scenario, r) {
  if (scenario === 'memory') return `${r.opened}/${r.connections} open, ${r.subscribed}/${r.subscribeWanted} subscribed, KiB/socket idle ${r.rssPerSocketKiB.idle.toFixed(2)}, 1 sub ${r.rssPerSocketKiB.one.toFixed(2)}, ${r.subscriptions} subs ${r.rssPerSocketKiB.many.toFixed(2)} (${r.rssPerSocketKiB.quiet.toFixed(2)} after ${MEMORY_QUIET_S} s idle)${r.snapshot === null ? '' : `; snapshot ${(r.snapshot.bytes / 2 ** 20).toFixed(0)} MB in ${r.snapshot.seconds.toFixed(1)} s`}`
  if (scenario === 'connect') return `${r.opened}/${r.connections} open in ${r.openSeconds.toFixed(2)} s, ${r.failures} failed, ${r.rssPerConnectionKiB.toFixed(2)} KiB/socket`
  if (scenario === 'ingest') return ['service', 'device', 'publish', 'reference', 'publishWithRules'].map((k) => `${k} ${Math.round(r[k].readingsPerSecond)}/s ${r[k].serverCpuPerReadingUs.toFixed(1)} µs`).join(', ')
  if (scenario === 'query') return `${Math.round(r.roundTripsPerSecond)} rt/s, p50 ${r.latencyMs.p50?.toFixed(2)} ms, ${r.serverCpuPerRoundTripUs.toFixed(2)} µs CPU/rt`
  return `${Math.round(r.deliveriesPerSecond)} deliveries/s, p50 ${r.latencyMs.p50?.toFixed(2)} ms, lost ${r.lost}, dup ${r.duplicates}, ${r.serverCpuPerDeliveryUs.toFixed(2)} µs CPU/delivery`
}

/**
 * One extra run with the servers' profilers on during each measured window (not in the table):
 * one summary per window (push: both instances summed; ingest: one per way in).
 */
async function profileScenario (scenario, redis, target) {
  mkdirSync(profileDir, { recursive: true })
  process.stdout.write(`${scenario}, profiled: ${target}, the measured window only (not in the table) … `)
  try {
    const result = await runOne(scenario, target, redis, { profile: true })
    process.stdout.write(`${brief(scenario, result)}\n`)
    const windows = Object.entries(result.profiles ?? {})
    if (windows.length === 0) throw new Error('no profile was taken')
    return windows.map(([label, files]) => {
      const top = topFunctions(files.map((f) => JSON.parse(readFileSync(f, 'utf8'))), 25)
      return { label, files, top, text: formatTop(top) }
    })
  } catch (err) {
    process.stdout.write(`FAILED: ${err.message}\n`)
    return null
  }
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err.stack}\n`)
  process.exitCode = 1
})
