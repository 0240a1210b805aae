/**
 * ble-heart-rate: reads a Bluetooth LE heart-rate strap (the standard Heart Rate Service, 0x180D)
 * in a WeChat mini program and hands its readings to a sink, normally `HeartClient.publish`.
 *
 * Same constraints as heart-client.js: plain ES2017 CommonJS, no build step, no Node or browser
 * APIs, everything from `wx` (the BLE functions) and the timers; a browser <script> gets
 * `self.heartBle`. Types: ble-heart-rate.d.ts. Usage: README.md next to this file.
 */
;(function (root, factory) {
  if (typeof module === 'object' && module !== null && module.exports) module.exports = factory()
  else root.heartBle = factory()
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict'

  /** Heart Rate Service and its Heart Rate Measurement characteristic (Bluetooth assigned numbers). */
  const HEART_RATE_SERVICE = '180D'
  const HEART_RATE_MEASUREMENT = '2A37'
  /** The Bluetooth base UUID a 16-bit number sits in, as platforms report it. */
  const BASE_UUID_TAIL = '-0000-1000-8000-00805F9B34FB'

  /** Sensor Contact Status, flags bits 1-2: 0 and 1 mean the feature is not supported. */
  const CONTACT = ['unsupported', 'unsupported', 'not_detected', 'detected']

  function measurementError (message) {
    const err = new Error('Heart Rate Measurement: ' + message)
    err.name = 'HeartRateMeasurementError'
    err.code = 'malformed_measurement'
    return err
  }

  function bytesOf (value) {
    // Not instanceof: the value may come from another realm (the platform's, a test's).
    if (Object.prototype.toString.call(value) === '[object ArrayBuffer]') return new Uint8Array(value)
    if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
    throw new TypeError('parseHeartRateMeasurement: pass an ArrayBuffer or a view of one')
  }

  /**
   * The Heart Rate Measurement characteristic (0x2A37), as the Heart Rate Service specification
   * lays it out: flags (bit 0: uint16 heart rate, else uint8; bits 1-2: sensor contact; bit 3:
   * energy expended, uint16 kJ; bit 4: RR intervals, uint16 each in 1/1024 s), all little-endian.
   * RR intervals come back in milliseconds (not rounded). Throws on a value too short for its flags.
   */
  function parseHeartRateMeasurement (value) {
    const b = bytesOf(value)
    if (b.length === 0) throw measurementError('empty value')
    const flags = b[0]
    const wide = (flags & 0x01) !== 0
    const hasEnergy = (flags & 0x08) !== 0
    const hasRr = (flags & 0x10) !== 0
    let at = 1
    const need = 1 + (wide ? 2 : 1) + (hasEnergy ? 2 : 0) + (hasRr ? 2 : 0)
    if (b.length < need) {
      throw measurementError('flags 0x' + flags.toString(16) + ' need at least ' + need + ' bytes, got ' + b.length)
    }
    let bpm
    if (wide) {
      bpm = b[at] | (b[at + 1] << 8)
      at += 2
    } else {
      bpm = b[at]
      at += 1
    }
    let energyKJ = null
    if (hasEnergy) {
      energyKJ = b[at] | (b[at + 1] << 8)
      at += 2
    }
    const rrMs = []
    if (hasRr) {
      if ((b.length - at) % 2 !== 0) throw measurementError('RR intervals take 2 bytes each; ' + (b.length - at) + ' bytes are left')
      for (; at < b.length; at += 2) rrMs.push((b[at] | (b[at + 1] << 8)) * 1000 / 1024)
    }
    return { bpm, contact: CONTACT[(flags >> 1) & 0x03], energyKJ, rrMs }
  }

  /** Whether a UUID as a platform reports it (16-bit or 128-bit, either case) is `short`. */
  function isUuid (uuid, short) {
    const u = String(uuid).toUpperCase()
    return u === short || u === '0000' + short + BASE_UUID_TAIL
  }

  function noop () {}

  function positive (value, fallback) {
    return typeof value === 'number' && value > 0 && isFinite(value) ? value : fallback
  }

  /**
   * One strap: finds it (or takes a known deviceId), connects, turns on heart-rate notifications,
   * publishes every reading that has sensor contact, and reconnects whenever it goes away, until
   * stop(). State: 'idle', 'scanning', 'connecting', 'streaming', 'reconnecting', 'stopped'.
   */
  class HeartRateStrap {
    constructor (options) {
      if (options === null || typeof options !== 'object') throw new TypeError('HeartRateStrap: options are required')
      const sink = options.sink
      if (sink === null || typeof sink !== 'object' || typeof sink.publish !== 'function') {
        throw new TypeError('HeartRateStrap: sink must have publish(readings), e.g. a HeartClient')
      }
      const api = options.wx || (typeof wx !== 'undefined' ? wx : null) // eslint-disable-line no-undef
      if (api === null || typeof api.createBLEConnection !== 'function') {
        throw new TypeError('HeartRateStrap: no wx.createBLEConnection: outside a mini program, pass options.wx')
      }
      this._wx = api
      this._sink = sink
      this._deviceId = typeof options.deviceId === 'string' && options.deviceId !== '' ? options.deviceId : null
      this._reconnectDelayMs = positive(options.reconnectDelayMs, 1000)
      this._connectTimeoutMs = positive(options.connectTimeoutMs, 10000)
      this._onReading = options.onReading || noop
      this._onStateChange = options.onStateChange || noop
      this._onError = options.onError || noop
      this._state = 'idle'
      this._running = false
      /** Bumped on every connection attempt: callbacks of older attempts are ignored. */
      this._attempt = 0
      this._timer = null
      this._serviceId = null
      this._characteristicId = null
      const self = this
      this._listeners = {
        found: function (res) { self._found(res) },
        value: function (res) { self._value(res) },
        connection: function (res) { self._connectionChanged(res) }
      }
    }

    get state () {
      return this._state
    }

    /** The strap's deviceId once one was found (or the one given). */
    get deviceId () {
      return this._deviceId
    }

    start () {
      if (this._running) return
      this._running = true
      const api = this._wx
      api.onBLECharacteristicValueChange(this._listeners.value)
      api.onBLEConnectionStateChange(this._listeners.connection)
      this._openAdapter()
    }

    /** Disconnects and stops reconnecting. */
    stop () {
      if (!this._running) return
      this._running = false
      this._attempt++
      clearTimeout(this._timer)
      this._timer = null
      const api = this._wx
      api.offBLECharacteristicValueChange(this._listeners.value)
      api.offBLEConnectionStateChange(this._listeners.connection)
      if (this._state === 'scanning') this._stopScan()
      if (this._deviceId !== null) api.closeBLEConnection({ deviceId: this._deviceId, fail: noop })
      this._setState('stopped')
    }

    _openAdapter () {
      const self = this
      this._wx.openBluetoothAdapter({
        success: function () {
          if (!self._running) return
          if (self._deviceId === null) self._scan()
          else self._connect('connecting')
        },
        fail: function (res) {
          // Bluetooth off or not allowed (errCode 10001): try again later, the user may turn it on.
          self._failed(res, 'openBluetoothAdapter', 'connecting')
        }
      })
    }

    _scan () {
      const self = this
      this._setState('scanning')
      this._wx.onBluetoothDeviceFound(this._listeners.found)
      this._wx.startBluetoothDevicesDiscovery({
        services: [HEART_RATE_SERVICE],
        allowDuplicatesKey: false,
        fail: function (res) {
          self._stopScan()
          self._failed(res, 'startBluetoothDevicesDiscovery', 'scanning')
        }
      })
    }

    _stopScan () {
      this._wx.offBluetoothDeviceFound(this._listeners.found)
      this._wx.stopBluetoothDevicesDiscovery({ fail: noop })
    }

    _found (res) {
      if (!this._running || this._state !== 'scanning') return
      const devices = (res && res.devices) || []
      for (let i = 0; i < devices.length; i++) {
        const uuids = devices[i].advertisServiceUUIDs || []
        for (let j = 0; j < uuids.length; j++) {
          if (!isUuid(uuids[j], HEART_RATE_SERVICE)) continue
          this._deviceId = devices[i].deviceId
          this._stopScan()
          this._connect('connecting')
          return
        }
      }
    }

    _connect (state) {
      this._setState(state)
      const attempt = ++this._attempt
      const deviceId = this._deviceId
      const api = this._wx
      const self = this
      const current = function () { return self._running && attempt === self._attempt }
      const fail = function (what) {
        return function (res) { if (current()) self._failed(res, what, 'reconnecting') }
      }
      api.createBLEConnection({
        deviceId,
        timeout: this._connectTimeoutMs,
        fail: fail('createBLEConnection'),
        success: function () {
          if (!current()) return
          api.getBLEDeviceServices({
            deviceId,
            fail: fail('getBLEDeviceServices'),
            success: function (res) {
              if (!current()) return
              const service = find(res.services, HEART_RATE_SERVICE)
              if (service === null) return self._failed({ errMsg: 'the device has no Heart Rate Service (0x180D)' }, 'getBLEDeviceServices', 'reconnecting')
              api.getBLEDeviceCharacteristics({
                deviceId,
                serviceId: service.uuid,
                fail: fail('getBLEDeviceCharacteristics'),
                success: function (res) {
                  if (!current()) return
                  const ch = find(res.characteristics, HEART_RATE_MEASUREMENT)
                  if (ch === null) return self._failed({ errMsg: 'the service has no Heart Rate Measurement (0x2A37)' }, 'getBLEDeviceCharacteristics', 'reconnecting')
                  api.notifyBLECharacteristicValueChange({
                    deviceId,
                    serviceId: service.uuid,
                    characteristicId: ch.uuid,
                    state: true,
                    fail: fail('notifyBLECharacteristicValueChange'),
                    success: function () {
                      if (!current()) return
                      self._serviceId = service.uuid
                      self._characteristicId = ch.uuid
                      self._setState('streaming')
                    }
                  })
                }
              })
            }
          })
        }
      })
    }

    _connectionChanged (res) {
      if (!this._running || res.deviceId !== this._deviceId || res.connected) return
      if (this._state !== 'streaming' && this._state !== 'connecting') return
      // The strap went away (out of range, taken off, battery): connect again after a pause.
      this._attempt++
      this._retryLater('reconnecting')
    }

    _value (res) {
      if (!this._running || res.deviceId !== this._deviceId || !isUuid(res.characteristicId, HEART_RATE_MEASUREMENT)) return
      let m
      try {
        m = parseHeartRateMeasurement(res.value)
      } catch (err) {
        this._report(err)
        return
      }
      const ts = Date.now()
      try {
        this._onReading({ bpm: m.bpm, contact: m.contact, energyKJ: m.energyKJ, rrMs: m.rrMs, ts })
      } catch (err) {
        this._report(err)
      }
      // A strap not touching the skin sends 0 or noise: not a heart rate.
      if (m.contact === 'not_detected') return
      const self = this
      let result
      try {
        result = this._sink.publish([{ bpm: m.bpm, ts }])
      } catch (err) {
        this._report(err)
        return
      }
      if (result && typeof result.then === 'function') result.then(noop, function (err) { self._report(err) })
    }

    _failed (res, what, state) {
      if (!this._running) return
      const err = new Error(what + ' failed: ' + ((res && res.errMsg) || 'unknown error'))
      err.name = 'HeartRateStrapError'
      err.code = 'ble_failed'
      if (res && typeof res.errCode === 'number') err.errCode = res.errCode
      this._report(err)
      if (this._deviceId !== null && what !== 'createBLEConnection' && what !== 'openBluetoothAdapter') {
        this._wx.closeBLEConnection({ deviceId: this._deviceId, fail: noop })
      }
      this._retryLater(state)
    }

    _retryLater (state) {
      this._setState(state)
      clearTimeout(this._timer)
      const self = this
      this._timer = setTimeout(function () {
        self._timer = null
        if (!self._running) return
        if (state === 'connecting' || state === 'scanning') self._openAdapter()
        else self._connect('reconnecting')
      }, this._reconnectDelayMs)
    }

    _setState (state) {
      if (state === this._state) return
      const previous = this._state
      this._state = state
      try {
        this._onStateChange(state, previous)
      } catch (err) {
        this._report(err)
      }
    }

    _report (err) {
      try {
        this._onError(err)
      } catch (ignored) {
        // The application's error hook failed: nothing sensible is left to tell.
      }
    }
  }

  function find (list, short) {
    const items = list || []
    for (let i = 0; i < items.length; i++) if (isUuid(items[i].uuid, short)) return items[i]
    return null
  }

  return { parseHeartRateMeasurement, HeartRateStrap, HEART_RATE_SERVICE, HEART_RATE_MEASUREMENT }
})
