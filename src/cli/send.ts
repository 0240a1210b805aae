/** `heart-gateway send <userId> <bpm>`: one reading through the ingest API, as a device sends it. */
import { DEFAULT_HTTP_URL, UsageError, baseUrl, parse } from './common.js'
import { apiKey, postReadings } from './ingest.js'
import { checkUserId } from './token.js'

export async function sendCommand (args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { url: { type: 'string' }, key: { type: 'string' } })
  const [user, bpmArg, ...extra] = positionals
  if (bpmArg === undefined || extra.length > 0) throw new UsageError('usage: heart-gateway send <userId> <bpm> [--url URL] [--key KEY]')
  const bpm = Number(bpmArg)
  // The range and integer checks are the server's: its message is the one to show.
  if (bpmArg.trim() === '' || !Number.isFinite(bpm)) throw new UsageError(`bpm must be a number, not "${bpmArg}"`)
  const answer = await postReadings(baseUrl(values.url ?? DEFAULT_HTTP_URL, 'http'), apiKey(values.key), checkUserId(user), [{ bpm }])
  process.stdout.write(JSON.stringify(answer) + '\n')
}
