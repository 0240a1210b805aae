/**
 * Mints a token for trying the service locally: `npm run token -- <userId> [ttlSeconds]`.
 * Uses JWT_SECRET, or the development secret the server generated when JWT_SECRET is unset.
 */
import { createSigner } from 'fast-jwt'
import { readFile } from 'node:fs/promises'
import { isUserId } from '../heart/reading.js'

const DEV_SECRET_FILE = '.heart-gateway/dev-jwt-secret'
const DEFAULT_TTL_S = 7200

async function secret (): Promise<string> {
  const fromEnv = process.env.JWT_SECRET
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv
  try {
    return (await readFile(DEV_SECRET_FILE, 'utf8')).trim()
  } catch {
    throw new Error(`JWT_SECRET is not set and ${DEV_SECRET_FILE} does not exist yet: start the server once (npm start) or set JWT_SECRET`)
  }
}

async function main (): Promise<void> {
  const [userId, ttlArg] = process.argv.slice(2)
  if (!isUserId(userId)) throw new Error('usage: npm run token -- <userId> [ttlSeconds]   (userId: 1-64 characters of A-Z a-z 0-9 _ -)')
  const ttl = ttlArg === undefined ? DEFAULT_TTL_S : Number(ttlArg)
  if (!Number.isInteger(ttl) || ttl <= 0) throw new Error('ttlSeconds must be a positive integer')
  const sign = createSigner({ key: await secret(), algorithm: 'HS256', expiresIn: ttl * 1000 })
  process.stdout.write(sign({ sub: userId }) + '\n')
}

main().catch((err: Error) => {
  process.stderr.write(err.message + '\n')
  process.exit(1)
})
