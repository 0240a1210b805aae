import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { ReplyError } from 'ioredis'
import { StoreUnavailableError } from '../src/heart/store.js'
import { loggerOptions } from '../src/logger.js'
import { ROOT, RedisServer, build, eventually, testEnv } from './helper.js'

const PASSWORD = 'redis-password-9d41c7e2'
const WRONG = 'stale-password-5b03fa86'

t.test('a Redis password refused at start-up reaches no log line at any level, nor stderr', async (t) => {
  const redis = await RedisServer.start([], { password: PASSWORD })
  t.teardown(() => redis.stop())
  const proc = spawn(process.execPath, ['dist/src/server.js'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...testEnv({ LOG_LEVEL: 'trace', HOST: '127.0.0.1', PORT: '0', REDIS_URL: `redis://:${WRONG}@127.0.0.1:${redis.port}` }) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  let output = ''
  proc.stdout.on('data', (chunk) => { output += String(chunk) })
  proc.stderr.on('data', (chunk) => { output += String(chunk) })
  const [code] = await once(proc, 'close')
  t.equal(code, 1, 'start-up fails')
  const fatal = output.split('\n').find((l) => l.includes('could not start') && l.startsWith('{'))
  t.match(JSON.parse(fatal ?? '{}'), { level: 60, err: { message: /WRONGPASS/, command: { name: /^(auth|hello)$/ } } }, 'the refusal is logged, with the command named')
  t.notOk(output.includes(WRONG), 'the password is nowhere in the output')
})

t.test('after the Redis password changes, reconnect attempts are logged without the old password', async (t) => {
  const redis = await RedisServer.start([], { password: PASSWORD })
  t.teardown(() => redis.stop())
  const logs: string[] = []
  await build(t, { REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${redis.port}` }, { logs })
  const admin = redis.client()
  t.teardown(() => admin.disconnect())
  await admin.config('SET', 'requirepass', 'rotated-password-0e6b')
  await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
  t.ok(await eventually(() => logs.some((l) => l.includes('WRONGPASS') && l.includes('redis connection error'))), 'the refused reconnect is logged (debug)')
  t.ok(await eventually(() => logs.some((l) => l.includes('WRONGPASS') && l.includes('redis feed connection error'))), 'so is the feed\'s')
  t.notOk(logs.some((l) => l.includes(PASSWORD)), 'the password the service sends is in no log line')
})

t.test('the service logger drops a Redis command\'s arguments from errors, their causes and Redis\'s echo of them', async (t) => {
  const redis = await RedisServer.start()
  t.teardown(() => redis.stop())
  const client = redis.client()
  t.teardown(() => client.disconnect())
  const err = await client.call('NOSUCHCOMMAND', PASSWORD).catch((e: unknown) => e) as Error & { command: { args: string[] } }
  t.ok(err instanceof ReplyError, 'a reply error')
  t.ok(err.command.args.includes(PASSWORD) && err.message.includes(PASSWORD), 'ioredis puts the argument in the error, and Redis in its message')
  const lines: string[] = []
  const app = Fastify({ logger: { ...(loggerOptions('trace') as object), stream: new Writable({ write (chunk, _enc, cb) { lines.push(String(chunk)); cb() } }) } as never })
  t.teardown(() => app.close())
  app.log.debug({ err }, 'as the connection logs it')
  app.log.warn({ err: new StoreUnavailableError(err) }, 'wrapped, as the hub logs it')
  app.log.error(err)
  t.equal(lines.length, 3)
  for (const line of lines) {
    t.notOk(line.includes(PASSWORD), 'no argument in the line')
    t.match(line, /unknown command 'NOSUCHCOMMAND'/, 'the error is still there')
  }
  t.match(JSON.parse(lines[0]).err, { message: /^ERR unknown command/, command: { name: 'NOSUCHCOMMAND' } })
  t.equal(err.command.args[0], PASSWORD, 'the caller\'s error is left as it was')
})
