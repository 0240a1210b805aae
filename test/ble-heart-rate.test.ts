/**
 * client/ble-heart-rate.js: the Heart Rate Measurement parser against vectors built from the
 * Bluetooth Heart Rate Service specification, and HeartRateStrap through a BLE shim typed against
 * the official mini-program typings (test/ble-shim.ts), loaded as a mini program loads it.
 */
import t, { type Test } from 'tap'
import type * as BleModule from '../client/ble-heart-rate.js'
import type { HeartRateMeasurement, HeartRateStrap as Strap, HeartRateStrapOptions, HeartRateStrapState } from '../client/ble-heart-rate.js'
import { loadScript } from './client-loader.js'
import { BleShim, type Peripheral } from './ble-shim.js'
import { eventually } from './helper.js'

const { parseHeartRateMeasurement, HeartRateStrap } = loadScript('ble-heart-rate.js') as typeof BleModule

const le16 = (v: number): number[] => [v & 0xff, v >> 8]

/**
 * One measurement laid out as the specification says: flags, then the heart rate (uint8, or
 * uint16 with bit 0), energy expended (uint16, bit 3), RR intervals (uint16 each, bit 4).
 */
function encode (flags: number, bpm: number, energy: number, rr: number[]): number[] {
  const bytes = [flags]
  bytes.push(...((flags & 0x01) !== 0 ? le16(bpm) : [bpm]))
  if ((flags & 0x08) !== 0) bytes.push(...le16(energy))
  if ((flags & 0x10) !== 0) for (const r of rr) bytes.push(...le16(r))
  return bytes
}

t.test('every combination of flags bits 0-4 parses as the specification lays it out', async (t) => {
  // Reserved bits 5-7 set in half of them: they must be ignored.
  for (let flags = 0; flags < 64; flags++) {
    const f = flags < 32 ? flags : (flags & 0x1f) | 0xe0
    const bpm = (f & 0x01) !== 0 ? 300 + flags : 40 + (flags & 0x1f)
    const rr = [1024, 512, 1000 + f]
    const bytes = encode(f, bpm, 1234 + f, rr)
    const expected: HeartRateMeasurement = {
      bpm,
      contact: ['unsupported', 'unsupported', 'not_detected', 'detected'][(f >> 1) & 3] as HeartRateMeasurement['contact'],
      energyKJ: (f & 0x08) !== 0 ? 1234 + f : null,
      rrMs: (f & 0x10) !== 0 ? rr.map((r) => r * 1000 / 1024) : []
    }
    t.same(parseHeartRateMeasurement(new Uint8Array(bytes).buffer), expected, `flags 0x${f.toString(16)}`)
  }
})

t.test('fixed vectors: 8- and 16-bit heart rates, contact, energy, several RR intervals', async (t) => {
  const p = (bytes: number[]): HeartRateMeasurement => parseHeartRateMeasurement(new Uint8Array(bytes).buffer)
  t.same(p([0x00, 0x48]), { bpm: 72, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'uint8 72, no contact feature')
  t.same(p([0x06, 0xff]), { bpm: 255, contact: 'detected', energyKJ: null, rrMs: [] }, 'uint8 maximum, contact detected')
  t.same(p([0x04, 0x00]), { bpm: 0, contact: 'not_detected', energyKJ: null, rrMs: [] }, 'contact supported, not detected')
  t.same(p([0x02, 0x48]), { bpm: 72, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'bit 1 alone: the feature is not supported')
  t.same(p([0x01, 0x2c, 0x01]), { bpm: 300, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'uint16 little-endian: 0x012C')
  t.same(p([0x01, 0x48, 0x00]), { bpm: 72, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'uint16 of a small value')
  t.same(p([0x08, 0x48, 0x10, 0x27]), { bpm: 72, contact: 'unsupported', energyKJ: 10000, rrMs: [] }, 'energy 10000 kJ')
  t.same(p([0x16, 0x48, 0x00, 0x04, 0x00, 0x02, 0x20, 0x03]), { bpm: 72, contact: 'detected', energyKJ: null, rrMs: [1000, 500, 781.25] }, 'three RR intervals: 1024, 512 and 800 / 1024 s')
  t.same(p([0x1f, 0x2c, 0x01, 0xff, 0xff, 0x01, 0x00]), { bpm: 300, contact: 'detected', energyKJ: 65535, rrMs: [1000 / 1024] }, 'everything at once')
  t.same(parseHeartRateMeasurement(new Uint8Array([0xaa, 0x00, 0x48, 0xbb]).subarray(1, 3)), { bpm: 72, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'a view into a larger buffer reads only its bytes')
  t.same(parseHeartRateMeasurement(new DataView(new Uint8Array([0x00, 0x50]).buffer)), { bpm: 80, contact: 'unsupported', energyKJ: null, rrMs: [] }, 'a DataView')
})

t.test('a value too short for its flags throws a clear error', async (t) => {
  const p = (bytes: number[]): HeartRateMeasurement => parseHeartRateMeasurement(new Uint8Array(bytes).buffer)
  const malformed = { name: 'HeartRateMeasurementError', code: 'malformed_measurement' }
  t.throws(() => p([]), { ...malformed, message: /empty value/ })
  t.throws(() => p([0x00]), { ...malformed, message: /flags 0x0 need at least 2 bytes, got 1/ })
  t.throws(() => p([0x01, 0x48]), { ...malformed, message: /flags 0x1 need at least 3 bytes, got 2/ }, 'a 16-bit heart rate cut short')
  t.throws(() => p([0x08, 0x48, 0x10]), { ...malformed, message: /need at least 4 bytes, got 3/ }, 'energy cut short')
  t.throws(() => p([0x10, 0x48]), { ...malformed, message: /need at least 4 bytes/ }, 'RR flagged, none present')
  t.throws(() => p([0x10, 0x48, 0x00, 0x04, 0x00]), { ...malformed, message: /RR intervals take 2 bytes each; 3 bytes are left/ }, 'an RR interval cut short')
  t.throws(() => parseHeartRateMeasurement([0, 72] as never), { name: 'TypeError' }, 'not a buffer')
})

/** A strap as a Polar or Garmin chest strap reports itself: 128-bit UUIDs. */
function chestStrap (shim: BleShim, deviceId: string, caseOf: (s: string) => string = (s) => s): Peripheral {
  return shim.add({
    deviceId,
    name: 'H10',
    advertisServiceUUIDs: [caseOf('0000180D-0000-1000-8000-00805F9B34FB')],
    services: [
      { uuid: '0000180F-0000-1000-8000-00805F9B34FB', characteristics: [{ uuid: '00002A19-0000-1000-8000-00805F9B34FB', notify: true }] },
      { uuid: caseOf('0000180D-0000-1000-8000-00805F9B34FB'), characteristics: [{ uuid: caseOf('00002A38-0000-1000-8000-00805F9B34FB'), notify: false }, { uuid: caseOf('00002A37-0000-1000-8000-00805F9B34FB'), notify: true }] }
    ],
    reachable: true
  })
}

class Sink {
  readonly published: Array<{ bpm: number, ts: number }> = []
  publish (readings: Array<{ bpm: number, ts: number }>): Promise<{ ids: string[] }> {
    this.published.push(...readings)
    return Promise.resolve({ ids: readings.map(() => 'id') })
  }
}

function newStrap (t: Test, opts: HeartRateStrapOptions): Strap {
  const strap = new HeartRateStrap(opts)
  t.teardown(() => strap.stop())
  return strap
}

t.test('the strap finds a 0x180D device among others (lower-case 128-bit UUIDs), streams, skips readings without contact, and comes back after a disconnect', async (t) => {
  const shim = new BleShim()
  shim.add({ deviceId: 'AA:BB:CC:00:00:01', name: 'scale', advertisServiceUUIDs: ['0000181D-0000-1000-8000-00805F9B34FB'], services: [], reachable: true })
  const strap = chestStrap(shim, 'AA:BB:CC:00:00:02', (s) => s.toLowerCase())
  const sink = new Sink()
  const states: HeartRateStrapState[] = []
  const errors: Error[] = []
  const seen: HeartRateMeasurement[] = []
  const s = newStrap(t, { wx: shim, sink, reconnectDelayMs: 50, onStateChange: (st) => states.push(st), onError: (e) => errors.push(e), onReading: (r) => seen.push(r) })
  s.start()
  t.ok(await eventually(() => s.state === 'streaming', 3000), 'streaming')
  t.equal(s.deviceId, strap.deviceId, 'the heart-rate strap, not the scale')
  t.equal(shim.scanning, false, 'discovery stopped once found')
  t.same(states, ['scanning', 'connecting', 'streaming'])

  t.ok(shim.notify(strap.deviceId, [0x06, 72]), 'contact detected')
  shim.notify(strap.deviceId, [0x04, 0]) // contact supported, not detected: not a heart rate
  shim.notify(strap.deviceId, [0x00, 74]) // no contact feature: kept
  shim.notify(strap.deviceId, [0x01, 75]) // malformed
  shim.notify(strap.deviceId, [0x17, 0x4c, 0x00, 0x00, 0x04]) // uint16 76, detected, one RR
  t.same(sink.published.map((r) => r.bpm), [72, 74, 76], 'published in order, without the reading lacking contact')
  t.ok(sink.published.every((r) => Number.isInteger(r.ts) && Math.abs(r.ts - Date.now()) < 5000), 'each with its time')
  t.same(seen.map((r) => r.bpm), [72, 0, 74, 76], 'onReading hears every well-formed measurement')
  t.same(seen.at(-1)?.rrMs, [1000])
  t.match(errors, [{ code: 'malformed_measurement' }], 'the malformed value is reported, not published')

  shim.goAway(strap.deviceId)
  t.equal(s.state, 'reconnecting', 'the disconnect is noticed')
  t.notOk(shim.notify(strap.deviceId, [0x06, 90]), 'nothing while away')
  t.ok(await eventually(() => (shim.calls.createBLEConnection ?? 0) >= 3, 3000), 'it keeps trying while the strap is out of reach')
  shim.comeBack(strap.deviceId)
  t.ok(await eventually(() => s.state === 'streaming', 3000), 'streaming again once the strap is back')
  t.ok(shim.notify(strap.deviceId, [0x06, 80]))
  t.same(sink.published.map((r) => r.bpm), [72, 74, 76, 80])
  t.equal(shim.calls.startBluetoothDevicesDiscovery, 1, 'reconnects to the same device, no new scan')
  t.ok(errors.slice(1).every((e) => (e as { code?: string }).code === 'ble_failed'), 'failed attempts are reported as ble_failed')

  s.stop()
  t.equal(s.state, 'stopped')
  t.notOk(shim.isConnected(strap.deviceId), 'stop() disconnects')
  t.notOk(shim.notify(strap.deviceId, [0x06, 81]))
  t.equal(sink.published.length, 4)
})

t.test('a known deviceId (upper-case UUIDs) connects without scanning', async (t) => {
  const shim = new BleShim()
  const strap = chestStrap(shim, 'AA:BB:CC:00:00:03')
  const sink = new Sink()
  const s = newStrap(t, { wx: shim, sink, deviceId: strap.deviceId })
  s.start()
  t.ok(await eventually(() => s.state === 'streaming', 3000))
  t.equal(shim.calls.startBluetoothDevicesDiscovery, undefined, 'no scan')
  shim.notify(strap.deviceId, [0x00, 66])
  t.same(sink.published.map((r) => r.bpm), [66])
})

t.test('a device without the heart-rate service is reported; a sink without publish is refused', async (t) => {
  const shim = new BleShim()
  shim.add({ deviceId: 'AA:BB:CC:00:00:04', name: 'not-a-strap', advertisServiceUUIDs: [], services: [{ uuid: '0000180F-0000-1000-8000-00805F9B34FB', characteristics: [] }], reachable: true })
  const errors: Error[] = []
  const s = newStrap(t, { wx: shim, sink: new Sink(), deviceId: 'AA:BB:CC:00:00:04', reconnectDelayMs: 50, onError: (e) => errors.push(e) })
  s.start()
  t.ok(await eventually(() => errors.length >= 1, 3000))
  t.match(errors[0], { code: 'ble_failed', message: /no Heart Rate Service \(0x180D\)/ })
  t.notOk(shim.isConnected('AA:BB:CC:00:00:04'), 'the connection is closed again')
  t.throws(() => new HeartRateStrap({ wx: shim, sink: {} as never }), { name: 'TypeError', message: /publish/ })
})
