import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'

/** Where the server keeps its generated development secret, relative to where it runs; `heart-gateway token` reads it. */
export const DEV_SECRET_FILE = '.heart-gateway/dev-jwt-secret'

/** The shortest HS256 secret accepted: production refuses a shorter JWT_SECRET, and a shorter kept secret is replaced. */
export const JWT_SECRET_MIN = 32

/**
 * A random JWT secret for development, kept in a file readable only by its owner so that the
 * server and `npm run token` agree on it without anyone choosing a weak secret. Never used in production.
 */
export async function loadDevSecret (file: string): Promise<string> {
  try {
    const existing = (await readFile(file, 'utf8')).trim()
    if (existing.length >= JWT_SECRET_MIN) return existing
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const secret = randomBytes(32).toString('base64url')
  await mkdir(dirname(file), { recursive: true, mode: 0o700 })
  await writeFile(file, secret + '\n', { mode: 0o600 })
  return secret
}
