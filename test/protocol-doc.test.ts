/**
 * The docs are part of the contract: every frame type, error code and close code the code defines
 * is documented in docs/protocol.md, and every setting is in the README's configuration table.
 */
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import {
  CLIENT_FRAME_TYPES, CloseCode, ERROR_CODES,
  alertFrame, currentFrame, errorFrame, pongFrame, publishedFrame, readingFrame, refreshedFrame, revokedFrame, statusFrame, subscribedFrame, unsubscribedFrame
} from '../src/heart/protocol.js'
import { configSchema } from '../plugins/config.js'

const protocolDoc = await readFile(fileURLToPath(new URL('../docs/protocol.md', import.meta.url)), 'utf8')
const readme = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8')

/** Server frame types, taken from the frame builders so a new builder cannot slip past the docs. */
const SERVER_FRAME_TYPES = [
  currentFrame('u1', null),
  pongFrame(),
  subscribedFrame('u1', { current: null, lastId: null, truncated: false, state: 'offline', lastTs: null, alerts: [] }),
  alertFrame({ alertId: '1-0', userId: 'u1', kind: 'high', state: 'open', bpm: 150, ts: 1, openedAt: 1 }),
  readingFrame('u1', { id: '1-0', bpm: 72, ts: 1 }),
  statusFrame('u1', 'offline', null),
  unsubscribedFrame('u1'),
  publishedFrame(['1-0'], 0),
  refreshedFrame(1),
  revokedFrame('u1'),
  errorFrame('internal', 'x')
].map((frame) => (JSON.parse(frame) as { type: string }).type)

t.test('docs/protocol.md names every client frame type in backticks', async (t) => {
  for (const type of CLIENT_FRAME_TYPES) t.ok(protocolDoc.includes(`\`${type}\``), `\`${type}\` is documented`)
})

t.test('docs/protocol.md names every server frame type in backticks', async (t) => {
  for (const type of SERVER_FRAME_TYPES) t.ok(protocolDoc.includes(`\`${type}\``), `\`${type}\` is documented`)
})

t.test('docs/protocol.md names every error code in backticks', async (t) => {
  for (const code of ERROR_CODES) t.ok(protocolDoc.includes(`\`${code}\``), `\`${code}\` is documented`)
})

t.test('docs/protocol.md has a row for every close code', async (t) => {
  for (const [name, code] of Object.entries(CloseCode)) {
    t.match(protocolDoc, new RegExp(`^\\| \`${code}\` \\|`, 'm'), `${name} (${code}) has a row in the close code table`)
  }
})

t.test('the README configuration table names every setting of plugins/config.ts', async (t) => {
  const settings = Object.keys(configSchema.properties)
  t.ok(settings.length > 0)
  for (const name of settings) t.match(readme, new RegExp(`^\\| \`${name}\` \\|`, 'm'), `${name} has a row in the README`)
})
