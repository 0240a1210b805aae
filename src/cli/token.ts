/**
 * `heart-gateway token <userId> [--ttl S]` (also `npm run token -- <userId>`): mints a token for
 * trying the service locally, with JWT_SECRET or the development secret the server generated
 * when JWT_SECRET is unset. The other commands that need a token (watch, demo) sign through here.
 */
import { createSigner } from 'fast-jwt'
import { readFile } from 'node:fs/promises'
import { DEV_SECRET_FILE } from '../dev-secret.js'
import { isUserId } from '../heart/reading.js'
import { CliError, UsageError, parse, positiveInteger } from './common.js'

export const DEFAULT_TTL_S = 7200

/** JWT_SECRET, or the development secret file; never creates one (only the server does). */
export async function jwtSecret (): Promise<string> {
  const fromEnv = process.env.JWT_SECRET
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv
  try {
    return (await readFile(DEV_SECRET_FILE, 'utf8')).trim()
  } catch {
    throw new CliError(`JWT_SECRET is not set and ${DEV_SECRET_FILE} does not exist yet: start the server once (npm start) or set JWT_SECRET`)
  }
}

/**
 * An HS256 token as the server mints it: `sub` is the user, `exp` is `ttlS` from now, and `iss` /
 * `aud` are JWT_ISSUER / JWT_AUDIENCE when those are set (a server with them refuses tokens without).
 */
export function signToken (secret: string, userId: string, ttlS = DEFAULT_TTL_S): string {
  const iss = process.env.JWT_ISSUER
  const aud = process.env.JWT_AUDIENCE
  return createSigner({
    key: secret,
    algorithm: 'HS256',
    expiresIn: ttlS * 1000,
    ...(iss !== undefined && iss !== '' ? { iss } : {}),
    ...(aud !== undefined && aud !== '' ? { aud } : {})
  })({ sub: userId })
}

export async function mintToken (userId: string, ttlS = DEFAULT_TTL_S): Promise<string> {
  return signToken(await jwtSecret(), userId, ttlS)
}

export function checkUserId (value: string | undefined): string {
  if (!isUserId(value)) throw new UsageError(`userId must be 1-64 characters of A-Z a-z 0-9 _ -, not ${value === undefined ? 'missing' : `"${value}"`}`)
  return value
}

export async function tokenCommand (args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { ttl: { type: 'string' } })
  // `npm run token -- <userId> <ttlSeconds>` was the original form: the positional ttl still works.
  const [userId, ttlArg, ...extra] = positionals
  if (extra.length > 0 || (ttlArg !== undefined && values.ttl !== undefined)) throw new UsageError('usage: heart-gateway token <userId> [--ttl seconds]')
  const ttl = positiveInteger('--ttl', values.ttl ?? ttlArg, DEFAULT_TTL_S)
  process.stdout.write(await mintToken(checkUserId(userId), ttl) + '\n')
}
