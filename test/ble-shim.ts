/// <reference path="./wechat-typings.d.ts" />
/**
 * The BLE part of a mini program's `wx`, typed against the official typings
 * (miniprogram-api-typings), with simulated peripherals: what a strap advertises, its services
 * and characteristics (as platforms report them: 128-bit UUIDs), notifications it sends, and its
 * going away and coming back. Callbacks run asynchronously, as in WeChat; only the callback style
 * is implemented (no promise when `success` is absent). Fail results carry WeChat's errCodes.
 */

type Result = WechatMiniprogram.BluetoothError

interface Callbacks { success?: (res: any) => void, fail?: (res: Result) => void, complete?: (res: any) => void }

type Api = Pick<WechatMiniprogram.Wx,
'openBluetoothAdapter' | 'startBluetoothDevicesDiscovery' | 'stopBluetoothDevicesDiscovery' | 'onBluetoothDeviceFound' | 'offBluetoothDeviceFound' |
'createBLEConnection' | 'closeBLEConnection' | 'getBLEDeviceServices' | 'getBLEDeviceCharacteristics' | 'notifyBLECharacteristicValueChange' |
'onBLECharacteristicValueChange' | 'offBLECharacteristicValueChange' | 'onBLEConnectionStateChange' | 'offBLEConnectionStateChange'>

/** A peripheral within reach (or not). */
export interface Peripheral {
  deviceId: string
  name: string
  advertisServiceUUIDs: string[]
  services: Array<{ uuid: string, characteristics: Array<{ uuid: string, notify: boolean }> }>
  /** In range and on: createBLEConnection succeeds. */
  reachable: boolean
}

function settle (opts: Callbacks | undefined, ok: boolean, res: object): void {
  setImmediate(() => {
    if (ok) opts?.success?.(res)
    else opts?.fail?.(res as Result)
    opts?.complete?.(res)
  })
}

const ok = (api: string): { errMsg: string, errCode: number } => ({ errMsg: `${api}:ok`, errCode: 0 })
const fail = (api: string, errCode: number, why: string): Result => ({ errMsg: `${api}:fail ${why}`, errCode })

export class BleShim implements Api {
  readonly peripherals: Peripheral[] = []
  adapterOpen = false
  scanning = false
  /** Calls made, by API name, for the test to look at. */
  readonly calls: Record<string, number> = {}
  private readonly connected = new Set<string>()
  /** deviceId/characteristicId pairs with notifications on. */
  private readonly notifying = new Set<string>()
  private readonly foundListeners = new Set<WechatMiniprogram.OnBluetoothDeviceFoundCallback>()
  private readonly valueListeners = new Set<WechatMiniprogram.OnBLECharacteristicValueChangeCallback>()
  private readonly stateListeners = new Set<WechatMiniprogram.OnBLEConnectionStateChangeCallback>()

  private count (api: string): void {
    this.calls[api] = (this.calls[api] ?? 0) + 1
  }

  openBluetoothAdapter<T extends WechatMiniprogram.OpenBluetoothAdapterOption = WechatMiniprogram.OpenBluetoothAdapterOption> (option?: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.OpenBluetoothAdapterOption> {
    this.count('openBluetoothAdapter')
    this.adapterOpen = true
    settle(option, true, ok('openBluetoothAdapter'))
    return undefined as never
  }

  startBluetoothDevicesDiscovery<T extends WechatMiniprogram.StartBluetoothDevicesDiscoveryOption = WechatMiniprogram.StartBluetoothDevicesDiscoveryOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.StartBluetoothDevicesDiscoveryOption> {
    this.count('startBluetoothDevicesDiscovery')
    if (!this.adapterOpen) {
      settle(option, false, fail('startBluetoothDevicesDiscovery', 10000, 'not init'))
      return undefined as never
    }
    this.scanning = true
    settle(option, true, ok('startBluetoothDevicesDiscovery'))
    // Devices are reported as they are heard, a little later each.
    this.peripherals.forEach((p, i) => setTimeout(() => this.advertise(p, option.services), 5 * (i + 1)))
    return undefined as never
  }

  private advertise (p: Peripheral, services: string[] | undefined): void {
    if (!this.scanning || !p.reachable) return
    // Discovery filtered by services reports only devices advertising one of them.
    const wanted = (services ?? []).map((s) => s.toUpperCase())
    const advertised = p.advertisServiceUUIDs.map((u) => u.toUpperCase())
    if (wanted.length > 0 && !wanted.some((w) => advertised.some((a) => a === w || a === `0000${w}-0000-1000-8000-00805F9B34FB`))) return
    const device: WechatMiniprogram.BlueToothDevice = { RSSI: -60, advertisData: new ArrayBuffer(0), advertisServiceUUIDs: p.advertisServiceUUIDs, connectable: true, deviceId: p.deviceId, localName: p.name, name: p.name, serviceData: {} }
    for (const listener of [...this.foundListeners]) listener({ devices: [device] })
  }

  stopBluetoothDevicesDiscovery<T extends WechatMiniprogram.StopBluetoothDevicesDiscoveryOption = WechatMiniprogram.StopBluetoothDevicesDiscoveryOption> (option?: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.StopBluetoothDevicesDiscoveryOption> {
    this.count('stopBluetoothDevicesDiscovery')
    this.scanning = false
    settle(option, true, ok('stopBluetoothDevicesDiscovery'))
    return undefined as never
  }

  onBluetoothDeviceFound (listener: WechatMiniprogram.OnBluetoothDeviceFoundCallback): void { this.foundListeners.add(listener) }
  offBluetoothDeviceFound (listener?: WechatMiniprogram.OnBluetoothDeviceFoundCallback): void {
    if (listener === undefined) this.foundListeners.clear()
    else this.foundListeners.delete(listener)
  }

  createBLEConnection<T extends WechatMiniprogram.CreateBLEConnectionOption = WechatMiniprogram.CreateBLEConnectionOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.CreateBLEConnectionOption> {
    this.count('createBLEConnection')
    const p = this.find(option.deviceId)
    if (p === undefined || !p.reachable) {
      settle(option, false, fail('createBLEConnection', 10003, 'connection fail'))
      return undefined as never
    }
    this.connected.add(p.deviceId)
    settle(option, true, ok('createBLEConnection'))
    return undefined as never
  }

  closeBLEConnection<T extends WechatMiniprogram.CloseBLEConnectionOption = WechatMiniprogram.CloseBLEConnectionOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.CloseBLEConnectionOption> {
    this.count('closeBLEConnection')
    const was = this.connected.delete(option.deviceId)
    this.clearNotify(option.deviceId)
    settle(option, was, was ? ok('closeBLEConnection') : fail('closeBLEConnection', 10006, 'no connection'))
    return undefined as never
  }

  getBLEDeviceServices<T extends WechatMiniprogram.GetBLEDeviceServicesOption = WechatMiniprogram.GetBLEDeviceServicesOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.GetBLEDeviceServicesOption> {
    this.count('getBLEDeviceServices')
    const p = this.connectedPeripheral(option.deviceId)
    if (p === undefined) settle(option, false, fail('getBLEDeviceServices', 10006, 'no connection'))
    else settle(option, true, { ...ok('getBLEDeviceServices'), services: p.services.map((s) => ({ uuid: s.uuid, isPrimary: true })) })
    return undefined as never
  }

  getBLEDeviceCharacteristics<T extends WechatMiniprogram.GetBLEDeviceCharacteristicsOption = WechatMiniprogram.GetBLEDeviceCharacteristicsOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.GetBLEDeviceCharacteristicsOption> {
    this.count('getBLEDeviceCharacteristics')
    const service = this.connectedPeripheral(option.deviceId)?.services.find((s) => s.uuid === option.serviceId)
    if (service === undefined) {
      settle(option, false, fail('getBLEDeviceCharacteristics', 10004, 'no service'))
      return undefined as never
    }
    const characteristics: WechatMiniprogram.BLECharacteristic[] = service.characteristics.map((c) => ({
      uuid: c.uuid,
      properties: { indicate: false, notify: c.notify, read: true, write: false, writeDefault: false, writeNoResponse: false }
    }))
    settle(option, true, { ...ok('getBLEDeviceCharacteristics'), characteristics })
    return undefined as never
  }

  notifyBLECharacteristicValueChange<T extends WechatMiniprogram.NotifyBLECharacteristicValueChangeOption = WechatMiniprogram.NotifyBLECharacteristicValueChangeOption> (option: T): WechatMiniprogram.PromisifySuccessResult<T, WechatMiniprogram.NotifyBLECharacteristicValueChangeOption> {
    this.count('notifyBLECharacteristicValueChange')
    const ch = this.connectedPeripheral(option.deviceId)?.services.find((s) => s.uuid === option.serviceId)?.characteristics.find((c) => c.uuid === option.characteristicId)
    if (ch === undefined || !ch.notify) {
      settle(option, false, fail('notifyBLECharacteristicValueChange', ch === undefined ? 10005 : 10007, ch === undefined ? 'no characteristic' : 'property not support'))
      return undefined as never
    }
    const key = `${option.deviceId}/${option.characteristicId}`
    if (option.state) this.notifying.add(key)
    else this.notifying.delete(key)
    settle(option, true, ok('notifyBLECharacteristicValueChange'))
    return undefined as never
  }

  onBLECharacteristicValueChange (listener: WechatMiniprogram.OnBLECharacteristicValueChangeCallback): void { this.valueListeners.add(listener) }
  offBLECharacteristicValueChange (listener?: WechatMiniprogram.OnBLECharacteristicValueChangeCallback): void {
    if (listener === undefined) this.valueListeners.clear()
    else this.valueListeners.delete(listener)
  }

  onBLEConnectionStateChange (listener: WechatMiniprogram.OnBLEConnectionStateChangeCallback): void { this.stateListeners.add(listener) }
  offBLEConnectionStateChange (listener?: WechatMiniprogram.OffBLEConnectionStateChangeCallback): void {
    if (listener === undefined) this.stateListeners.clear()
    else this.stateListeners.delete(listener as WechatMiniprogram.OnBLEConnectionStateChangeCallback)
  }

  // ---- the simulated straps ----

  add (p: Peripheral): Peripheral {
    this.peripherals.push(p)
    return p
  }

  isConnected (deviceId: string): boolean {
    return this.connected.has(deviceId)
  }

  /** The strap sends a notification of its measurement characteristic; false if nothing listens for it. */
  notify (deviceId: string, bytes: number[]): boolean {
    const p = this.connectedPeripheral(deviceId)
    const found = p?.services.flatMap((s) => s.characteristics.map((c) => ({ s, c }))).find(({ c }) => this.notifying.has(`${deviceId}/${c.uuid}`))
    if (found === undefined) return false
    const value = new Uint8Array(bytes).buffer
    for (const listener of [...this.valueListeners]) listener({ deviceId, serviceId: found.s.uuid, characteristicId: found.c.uuid, value })
    return true
  }

  /** The strap goes out of range (or off): the connection drops and it cannot be reached. */
  goAway (deviceId: string): void {
    const p = this.find(deviceId)
    if (p !== undefined) p.reachable = false
    if (!this.connected.delete(deviceId)) return
    this.clearNotify(deviceId)
    for (const listener of [...this.stateListeners]) listener({ deviceId, connected: false })
  }

  comeBack (deviceId: string): void {
    const p = this.find(deviceId)
    if (p !== undefined) p.reachable = true
  }

  private find (deviceId: string): Peripheral | undefined {
    return this.peripherals.find((p) => p.deviceId === deviceId)
  }

  private connectedPeripheral (deviceId: string): Peripheral | undefined {
    return this.connected.has(deviceId) ? this.find(deviceId) : undefined
  }

  private clearNotify (deviceId: string): void {
    for (const key of [...this.notifying]) if (key.startsWith(`${deviceId}/`)) this.notifying.delete(key)
  }
}
