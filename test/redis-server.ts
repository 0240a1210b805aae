import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { Redis } from 'ioredis'

/** A port nobody listens on right now (the OS picks it). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

/**
 * A private redis-server on a free loopback port, owned by one test file. It can be stopped
 * and started again on the same port to test outages; nothing is saved to disk.
 */
export class RedisServer {
  private proc: ChildProcess | null = null

  private constructor (readonly port: number, private readonly extraArgs: string[], readonly password: string | undefined) {}

  /** With `password`, the server requires it (`requirepass`), and the probe and client() send it. */
  static async start (extraArgs: string[] = [], opts: { password?: string } = {}): Promise<RedisServer> {
    const server = new RedisServer(await freePort(), opts.password === undefined ? extraArgs : [...extraArgs, '--requirepass', opts.password], opts.password)
    await server.start()
    return server
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  get running (): boolean {
    return this.proc !== null
  }

  async start (): Promise<void> {
    const bin = process.env.REDIS_SERVER_BIN ?? 'redis-server'
    const proc = spawn(bin, [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--loglevel', 'warning', ...this.extraArgs
    ], { stdio: ['ignore', 'ignore', 'inherit'] })
    this.proc = proc
    proc.once('exit', () => { if (this.proc === proc) this.proc = null })
    const deadline = Date.now() + 10000
    for (;;) {
      const probe = new Redis({ port: this.port, host: '127.0.0.1', password: this.password, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
      probe.on('error', () => {})
      try {
        await probe.connect()
        await probe.ping()
        return
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`redis-server did not start on port ${this.port}: ${(err as Error).message}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      } finally {
        probe.disconnect()
      }
    }
  }

  /** Pauses the process (SIGSTOP): its connections stay open and nothing is answered, as with a stuck Redis. */
  pause (): void {
    this.proc?.kill('SIGSTOP')
  }

  /** Lets a paused server go on (SIGCONT): it answers what it was sent meanwhile. */
  resume (): void {
    this.proc?.kill('SIGCONT')
  }

  /** Kills the server at once, as a crash would. */
  async stop (): Promise<void> {
    const proc = this.proc
    if (proc === null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill('SIGKILL')
    await exited
    this.proc = null
  }

  /** A client of this server for the test's own checks. */
  client (): Redis {
    return new Redis({ port: this.port, host: '127.0.0.1', password: this.password, maxRetriesPerRequest: 1 })
  }
}
