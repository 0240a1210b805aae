import fp from 'fastify-plugin'
import { Counter } from 'prom-client'

/** Peers warned about at most; past that they are only counted, so spoofing clients cannot flood the log. */
const MAX_WARNED_PEERS = 1000

/**
 * X-Forwarded-For from a peer that TRUST_PROXY does not trust is ignored (Fastify's rule), which is
 * right for a client forging it, and the misconfiguration that makes every client behind nginx one
 * address (one rate limit, one address in every log line). Counted in
 * `heart_untrusted_forwarded_total`, and warned about once per peer.
 */
export default fp(async function forwarded (fastify) {
  const untrusted = new Counter({
    name: 'heart_untrusted_forwarded_total',
    help: 'Requests with X-Forwarded-For from a peer TRUST_PROXY does not trust (the header was ignored)',
    registers: [fastify.metrics.registry]
  })
  const warned = new Set<string>()
  fastify.addHook('onRequest', async (request) => {
    const header = request.headers['x-forwarded-for']
    if (header === undefined || String(header).trim() === '') return
    // Fastify's own trust decision: `ips` is the peer followed by the forwarded addresses it
    // accepted, and is absent when no proxy is trusted at all.
    if ((request.ips?.length ?? 1) > 1) return
    untrusted.inc()
    const peer = request.raw.socket?.remoteAddress ?? 'unknown'
    if (warned.has(peer) || warned.size >= MAX_WARNED_PEERS) return
    warned.add(peer)
    request.log.warn({ peer, trustProxy: fastify.config.TRUST_PROXY }, 'X-Forwarded-For from a peer TRUST_PROXY does not trust: the header is ignored, so every client behind this peer counts as one address; if it is your proxy, add it to TRUST_PROXY (warned once per peer, counted in heart_untrusted_forwarded_total)')
  })
}, { name: 'forwarded', dependencies: ['config', 'metrics'] })
