import { CliError, networkMessage, serverMessage } from './common.js'

export interface Reading {
  bpm: number
  ts?: number
}

const TIMEOUT_MS = 10_000

export interface IngestAnswer {
  accepted: number
  duplicates: number
  ids: string[]
}

/** An answer other than 202, with the server's message. */
export class IngestError extends CliError {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

/** The key from `--key`, else INGEST_API_KEY. */
export function apiKey (option: string | undefined): string {
  const key = option ?? process.env.INGEST_API_KEY
  if (key === undefined || key === '') throw new CliError('no API key: pass --key or set INGEST_API_KEY (one of the server\'s INGEST_API_KEYS)')
  return key
}

/**
 * POSTs readings of one user through the ingest API: one reading as `{bpm, ts?}`, several as a
 * batch. Throws IngestError for an answer other than 202 and a CliError when the server is not reached.
 */
export async function postReadings (base: string, key: string, userId: string, readings: Reading[]): Promise<IngestAnswer> {
  const url = `${base}/heart/${encodeURIComponent(userId)}/readings`
  const body = readings.length === 1 ? readings[0] : { readings }
  let res: Response
  let text: string
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': key },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS)
    })
    text = await res.text()
  } catch (err) {
    throw new CliError(networkMessage(base, err))
  }
  if (res.status !== 202) throw new IngestError(res.status, serverMessage(res.status, text))
  return JSON.parse(text) as IngestAnswer
}
