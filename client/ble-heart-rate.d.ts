/** Types of ble-heart-rate.js: a Bluetooth LE heart-rate strap in a mini program (usage: README.md here). */

/** A Heart Rate Measurement (0x2A37) value, as the Heart Rate Service specification defines it. */
export interface HeartRateMeasurement {
  bpm: number
  /** Sensor contact (flags bits 1-2): `unsupported` when the strap cannot tell. */
  contact: 'unsupported' | 'not_detected' | 'detected'
  /** Energy expended since the strap's last reset, in kJ (flags bit 3), or null. */
  energyKJ: number | null
  /** RR intervals (flags bit 4), converted from 1/1024 s to milliseconds, unrounded. */
  rrMs: number[]
}

/** Throws an Error with `code: 'malformed_measurement'` on a value too short for its flags. */
export declare function parseHeartRateMeasurement (value: ArrayBuffer | ArrayBufferView): HeartRateMeasurement

/** Where readings go: `HeartClient.publish`, or anything with the same shape. */
export interface ReadingSink {
  publish (readings: Array<{ bpm: number, ts: number }>): unknown
}

export type HeartRateStrapState = 'idle' | 'scanning' | 'connecting' | 'streaming' | 'reconnecting' | 'stopped'

interface BleCallbacks<T = unknown> {
  success?: (res: T) => void
  fail?: (res: { errMsg: string, errCode?: number }) => void
}

/** The part of `wx` the strap uses (callback style). */
export interface WxBleLike {
  openBluetoothAdapter (opts: BleCallbacks): unknown
  startBluetoothDevicesDiscovery (opts: { services?: string[], allowDuplicatesKey?: boolean } & BleCallbacks): unknown
  stopBluetoothDevicesDiscovery (opts: BleCallbacks): unknown
  onBluetoothDeviceFound (listener: (res: { devices: Array<{ deviceId: string, advertisServiceUUIDs: string[] }> }) => void): void
  offBluetoothDeviceFound (listener?: (res: { devices: Array<{ deviceId: string, advertisServiceUUIDs: string[] }> }) => void): void
  createBLEConnection (opts: { deviceId: string, timeout?: number } & BleCallbacks): unknown
  closeBLEConnection (opts: { deviceId: string } & BleCallbacks): unknown
  getBLEDeviceServices (opts: { deviceId: string } & BleCallbacks<{ services: Array<{ uuid: string, isPrimary: boolean }> }>): unknown
  getBLEDeviceCharacteristics (opts: { deviceId: string, serviceId: string } & BleCallbacks<{ characteristics: Array<{ uuid: string }> }>): unknown
  notifyBLECharacteristicValueChange (opts: { deviceId: string, serviceId: string, characteristicId: string, state: boolean } & BleCallbacks): unknown
  onBLECharacteristicValueChange (listener: (res: { deviceId: string, serviceId: string, characteristicId: string, value: ArrayBuffer }) => void): void
  offBLECharacteristicValueChange (listener?: (res: { deviceId: string, serviceId: string, characteristicId: string, value: ArrayBuffer }) => void): void
  onBLEConnectionStateChange (listener: (res: { deviceId: string, connected: boolean }) => void): void
  offBLEConnectionStateChange (listener?: (res: { deviceId: string, connected: boolean }) => void): void
}

export interface HeartRateStrapOptions {
  /** Where readings with sensor contact go: `{ bpm, ts }` each, one call per notification. */
  sink: ReadingSink
  /** Defaults to the mini program's global `wx`; tests pass a shim. */
  wx?: WxBleLike
  /** A strap already known (saved from an earlier scan): connect to it without scanning. */
  deviceId?: string
  /** Wait before connecting again after the strap went away or a step failed. Default 1000. */
  reconnectDelayMs?: number
  /** createBLEConnection's timeout. Default 10000. */
  connectTimeoutMs?: number
  /** Every measurement parsed, with or without contact (for a live display, RR intervals). */
  onReading?: (reading: HeartRateMeasurement & { ts: number }) => void
  onStateChange?: (state: HeartRateStrapState, previous: HeartRateStrapState) => void
  /** A failed BLE step (code `ble_failed`, `errCode` from WeChat), a malformed value, a failed publish. */
  onError?: (err: Error & { code?: string, errCode?: number }) => void
}

export declare class HeartRateStrap {
  constructor (options: HeartRateStrapOptions)
  readonly state: HeartRateStrapState
  /** The strap's deviceId once found (or the one given), null before. */
  readonly deviceId: string | null
  /** Opens the adapter, finds or connects the strap, and keeps it connected until stop(). */
  start (): void
  stop (): void
}

/** '180D' and '2A37'. */
export declare const HEART_RATE_SERVICE: '180D'
export declare const HEART_RATE_MEASUREMENT: '2A37'
