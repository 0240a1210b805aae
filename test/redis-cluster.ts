import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { RedisServer, freePort } from './redis-server.js'

const run = promisify(execFile)

/**
 * A real Redis Cluster of three masters on loopback ports (no replicas), made with
 * `redis-cli --cluster create`, for the tests of REDIS_CLUSTER_NODES.
 */
export class RedisCluster {
  private constructor (readonly nodes: RedisServer[], private readonly dir: string) {}

  static async start (masters = 3): Promise<RedisCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'heart-cluster-'))
    const nodes: RedisServer[] = []
    for (let i = 0; i < masters; i++) {
      nodes.push(await RedisServer.start([
        '--cluster-enabled', 'yes',
        '--cluster-port', String(await freePort()),
        '--cluster-config-file', join(dir, `nodes-${i}.conf`),
        '--cluster-node-timeout', '2000',
        '--dir', dir
      ]))
    }
    const cluster = new RedisCluster(nodes, dir)
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { timeout: 30000 })
    await cluster.waitUntilOk()
    return cluster
  }

  /** `host:port,host:port,…` as REDIS_CLUSTER_NODES takes it. */
  get nodeList (): string {
    return this.nodes.map((n) => `127.0.0.1:${n.port}`).join(',')
  }

  private async waitUntilOk (): Promise<void> {
    const deadline = Date.now() + 20000
    for (;;) {
      const states = await Promise.all(this.nodes.map(async (n) => {
        const c = new Redis({ port: n.port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0 })
        c.on('error', () => {})
        try {
          await c.connect()
          return String(await c.call('CLUSTER', 'INFO')).includes('cluster_state:ok')
        } catch {
          return false
        } finally {
          c.disconnect()
        }
      }))
      if (states.every(Boolean)) return
      if (Date.now() > deadline) throw new Error('the Redis cluster did not reach cluster_state:ok')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  async stop (): Promise<void> {
    await Promise.all(this.nodes.map(async (n) => await n.stop()))
    await rm(this.dir, { recursive: true, force: true })
  }
}
