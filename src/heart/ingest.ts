/**
 * The rules for readings a writer submits, one copy for every way in: HTTP ingest
 * (routes/heart/readings.ts, which also gives the schema to its OpenAPI docs) and the socket's
 * `publish` frame (src/heart/protocol.ts). Both then make the same atomic `store.append`.
 */
import { Type, type Static } from 'typebox'
import { BATCH_MAX } from './batch.js'
import { BPM_MAX, BPM_MIN, type NewReading } from './reading.js'
import { formatSchemaErrors, strictAjv } from '../validation.js'

/** How far ahead of the server's clock a device's `ts` may be. */
export const FUTURE_TOLERANCE_MS = 60_000
/** 2001-09-09: a smaller `ts` is almost always seconds sent where milliseconds belong. */
const TS_MIN = 1_000_000_000_000

export const IngestReading = Type.Object({
  bpm: Type.Integer({ minimum: BPM_MIN, maximum: BPM_MAX }),
  ts: Type.Optional(Type.Integer({ minimum: TS_MIN, description: 'milliseconds since the epoch; server time when absent' }))
}, { additionalProperties: false })

/** One reading, or a batch of them: exactly one of `bpm` and `readings` (checked in readingsOf, so errors name the field). */
export const IngestBody = Type.Object({
  bpm: Type.Optional(IngestReading.properties.bpm),
  ts: IngestReading.properties.ts,
  readings: Type.Optional(Type.Array(IngestReading, { minItems: 1, maxItems: BATCH_MAX }))
}, { additionalProperties: false })
export type IngestBodyT = Static<typeof IngestBody>

/** A submission that breaks a rule; the message names the field, under the caller's prefix (`body`, `frame`). */
export class IngestError extends Error {}

/**
 * The checks a schema cannot state, on a body that passed IngestBody: the readings to append,
 * with server time filled in where the writer sent no `ts`.
 */
export function readingsOf (body: IngestBodyT, now: number, prefix: string): NewReading[] {
  if ((body.bpm === undefined) === (body.readings === undefined)) {
    const what = body.bpm === undefined ? 'must have bpm (one reading) or readings (a batch)' : 'must have bpm (one reading) or readings (a batch), not both'
    throw new IngestError(`${prefix} ${what}`)
  }
  if (body.readings !== undefined && body.ts !== undefined) {
    throw new IngestError(`${prefix}/ts belongs inside each reading of a batch`)
  }
  const batch = body.readings ?? [{ bpm: body.bpm as number, ts: body.ts }]
  const list: NewReading[] = []
  for (let i = 0; i < batch.length; i++) {
    const { bpm, ts } = batch[i]
    if (ts !== undefined && ts > now + FUTURE_TOLERANCE_MS) {
      const path = body.readings === undefined ? 'ts' : `readings/${i}/ts`
      throw new IngestError(`${prefix}/${path} is more than 60 s in the future`)
    }
    list.push(ts === undefined ? { bpm, ts: now, serverTs: true } : { bpm, ts })
  }
  return list
}

const validateBody = strictAjv.compile(IngestBody)

/** For writers that are not HTTP requests (a `publish` frame): the schema, then readingsOf. */
export function parseReadings (input: Record<string, unknown>, now: number): NewReading[] {
  if (!validateBody(input)) throw new IngestError(formatSchemaErrors(validateBody.errors ?? [], 'frame').message)
  return readingsOf(input, now, 'frame')
}
