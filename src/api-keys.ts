import { createHash, timingSafeEqual } from 'node:crypto'

function digest (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}

/**
 * Checks device API keys in constant time: both sides are hashed to the same length first, and
 * every configured key is compared, so neither the length nor the position of a match leaks.
 */
export function apiKeyChecker (keys: readonly string[]): (candidate: string | undefined) => boolean {
  const digests = keys.map((k) => k.trim()).filter((k) => k !== '').map(digest)
  return (candidate) => {
    if (candidate === undefined || digests.length === 0) return false
    const d = digest(candidate)
    let ok = false
    for (const k of digests) ok = timingSafeEqual(k, d) || ok
    return ok
  }
}
