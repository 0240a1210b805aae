/**
 * heart-client: the WeChat mini-program client of heart-gateway's /heart/current socket.
 *
 * Plain ES2017 in CommonJS form, so a mini program can `require` it without a build step: no
 * Node APIs, no `window`, no ES module syntax, no async/await (older tool chains transpile it
 * badly), no `?.`/`??`/object spread. Everything it needs from the platform comes from `wx`
 * (`connectSocket`, and `onAppHide`/`onAppShow` when present) and the timer functions. The same
 * file is a browser script too (the demo page, as `self.heartClient`); outside a mini program,
 * ws-adapter.js makes a `wx` out of a WebSocket class (the browser's, or Node's `ws`).
 *
 * Protocol: docs/protocol.md. Types: heart-client.d.ts. Usage: README.md next to this file.
 */
// CommonJS where there is a `module` (mini programs, Node), else a global (a browser <script>).
;(function (root, factory) {
  if (typeof module === 'object' && module !== null && module.exports) module.exports = factory()
  else root.heartClient = factory()
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict'

  /** Close codes the server uses (src/heart/protocol.ts). */
  const CloseCode = {
    NORMAL: 1000,
    GOING_AWAY: 1001,
    ABNORMAL: 1006,
    POLICY: 1008,
    TOO_BIG: 1009,
    INTERNAL: 1011,
    TRY_AGAIN_LATER: 1013,
    TOKEN_EXPIRED: 4001
  }

  /** Error codes the server answers a resubscription with that are worth trying again on the same socket. */
  const TRANSIENT_ERRORS = { unavailable: true, internal: true, rate_limited: true }

  /** A close with code 1013 waits at least this many initial backoffs. */
  const TRY_AGAIN_LATER_FACTOR = 8

  /**
   * After 1001 the client redials within a random 0 to this many ms: every phone of an instance
   * that shuts down gets 1001 at the same moment, and redialling at once would hit the draining
   * instance (and the next one) as one crowd.
   */
  const GOING_AWAY_SPREAD_MS = 2000

  /**
   * Handshakes that fail in a row, with a token the client believes valid, before it asks for a
   * new one anyway: a mini program sees a refused handshake (401 for an expired token) only as
   * onError + onClose(1006), the same as a network that is down.
   */
  const RENEW_AFTER_FAILURES = 3

  /** WeChat's connectSocket fail message when the mini program already has 5 sockets. */
  const TOO_MANY_SOCKETS = 'exceed max task count'

  /** SocketTask.close takes a reason of at most this many UTF-8 bytes (and fails on a longer one). */
  const CLOSE_REASON_MAX_BYTES = 123

  /**
   * HTTP statuses of a refused handshake worth trying again (rate limit, a proxy without a live
   * instance behind it); any other refusal is final. Only adapters that see the status report it
   * (ws-adapter.js over Node's `ws`); mini programs and browsers do not.
   */
  const RETRY_STATUSES = { 429: true, 502: true, 503: true, 504: true }

  /**
   * Alert transitions a subscription remembers having reported (by alertId), so a
   * resubscription's open alerts are not reported twice; the oldest are forgotten past this many.
   */
  const REPORTED_ALERTS_MAX = 100

  /** The most readings one publish frame may carry (the server's BATCH_MAX). */
  const PUBLISH_BATCH_MAX = 500

  /** A history id, as `since` takes it. */
  const HISTORY_ID = /^[0-9]{1,20}-[0-9]{1,20}$/

  function clientError (code, message) {
    // Not a subclass: Error subclasses break `instanceof` once a tool chain transpiles classes to ES5.
    const err = new Error(message)
    err.name = 'HeartClientError'
    err.code = code
    return err
  }

  function positive (value, fallback) {
    return typeof value === 'number' && value > 0 && isFinite(value) ? value : fallback
  }

  /** Orders two history ids (`<ms>-<seq>`, decimal without leading zeros) exactly, without BigInt. */
  function compareIds (a, b) {
    const da = a.indexOf('-')
    const db = b.indexOf('-')
    return compareDigits(a.slice(0, da), b.slice(0, db)) || compareDigits(a.slice(da + 1), b.slice(db + 1))
  }

  function compareDigits (a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1
    return a < b ? -1 : a > b ? 1 : 0
  }

  const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

  /** The `exp` claim of a JWT (seconds), or null when the token cannot be read (no atob in mini programs). */
  function tokenExp (token) {
    const part = token.split('.')[1]
    if (part === undefined) return null
    let text = ''
    let bits = 0
    let acc = 0
    for (let i = 0; i < part.length; i++) {
      const v = BASE64URL.indexOf(part.charAt(i))
      if (v === -1) break
      acc = (acc << 6) | v
      bits += 6
      if (bits >= 8) {
        bits -= 8
        text += String.fromCharCode((acc >> bits) & 0xff)
      }
    }
    try {
      const exp = JSON.parse(text).exp
      return typeof exp === 'number' ? exp : null
    } catch (err) {
      return null
    }
  }

  /** The longest start of `text` that fits in `max` UTF-8 bytes, never splitting a character. */
  function cutUtf8 (text, max) {
    let bytes = 0
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i)
      const pair = c >= 0xd800 && c <= 0xdbff && i + 1 < text.length
      const size = c < 0x80 ? 1 : c < 0x800 ? 2 : pair ? 4 : 3
      if (bytes + size > max) return text.slice(0, i)
      bytes += size
      if (pair) i++
    }
    return text
  }

  function noop () {}

  /**
   * One logical connection to heart-gateway that survives restarts, outages, token expiry and the
   * app going to the background. State: 'idle' (not started, or stopped while the app is hidden),
   * 'connecting' (first connection), 'open', 'reconnecting' (waiting to retry, or retrying), 'closed'.
   */
  class HeartClient {
    constructor (options) {
      if (options === null || typeof options !== 'object') throw new TypeError('HeartClient: options are required')
      if (typeof options.url !== 'string' || options.url === '') throw new TypeError('HeartClient: url is required')
      if (typeof options.token !== 'string' || options.token === '') throw new TypeError('HeartClient: token is required')
      const api = options.wx || (typeof wx !== 'undefined' ? wx : null) // eslint-disable-line no-undef
      if (api === null || typeof api.connectSocket !== 'function') {
        throw new TypeError('HeartClient: no wx.connectSocket: outside a mini program, pass options.wx')
      }
      this._wx = api
      this._url = options.url
      this._token = options.token
      this._onTokenExpired = typeof options.onTokenExpired === 'function' ? options.onTokenExpired : null
      this._onStateChange = options.onStateChange || noop
      this._onRevoked = options.onRevoked || noop
      this._onResubscribed = options.onResubscribed || noop
      this._onError = options.onError || noop
      this._onDisconnect = options.onDisconnect || noop
      this._onStatus = options.onStatus || noop
      this._onAlert = options.onAlert || noop
      this._pingIntervalMs = positive(options.pingIntervalMs, 20000)
      this._deadAfterMs = positive(options.deadAfterMs, 45000)
      this._requestTimeoutMs = positive(options.requestTimeoutMs, 10000)
      this._publishQueueMax = positive(options.publishQueueMax, 600)
      const backoff = options.backoff || {}
      this._initialMs = positive(backoff.initialMs, 500)
      // Capped low: after an outage a phone should be back within about 2 s of the server.
      this._maxMs = Math.max(this._initialMs, positive(backoff.maxMs, 2000))

      this._state = 'idle'
      /** connect() was called and close() was not: losses are repaired, app show resumes. */
      this._started = false
      this._hidden = false
      /** Bumped whenever a socket is given up: callbacks of older sockets are ignored. */
      this._gen = 0
      this._task = null
      /** The current socket opened (a loss before that is a failed connection attempt). */
      this._taskOpened = false
      /** The server said the token expired (4001): get a new one before connecting again. */
      this._tokenStale = false
      /** Connection attempts that failed in a row (reset by the first frame a connection receives). */
      this._failures = 0
      /** The token was renewed because handshakes kept failing; not again until a socket opens. */
      this._renewedForFailures = false
      /** The server's clock minus this device's (from `pong.ts`), null until a pong came. */
      this._clockOffsetMs = null
      this._reconnectTimer = null
      this._pingTimer = null
      this._deadTimer = null
      this._appHooks = null
      /** userId → subscription (see subscribe()). */
      this._subs = new Map()
      /** reqId → request waiting for its reply. */
      this._requests = new Map()
      /** reqId of an answered subscribe → its subscription, on the current socket (a replay can still fail). */
      this._answered = new Map()
      this._nextReqId = 1
      /** Readings publish() dropped from a full queue, oldest first. */
      this._droppedReadings = 0
      /** The last ts publish() stamped on a reading without one. */
      this._lastStampTs = 0
    }

    /** Readings dropped, oldest first, because more than publishQueueMax waited for a connection. */
    get droppedReadings () {
      return this._droppedReadings
    }

    get state () {
      return this._state
    }

    /** Starts connecting (and keeps the connection up until close()). */
    connect () {
      if (this._started && !this._hidden) return
      this._started = true
      this._hidden = false
      this._registerAppHooks()
      this._failures = 0
      this._dial(this._state === 'idle' || this._state === 'closed' ? 'connecting' : 'reconnecting')
    }

    /** Closes for good: rejects what is pending, forgets subscriptions, stops following the app's visibility. */
    close () {
      if (this._state === 'closed') return
      this._started = false
      this._hidden = false
      this._unregisterAppHooks()
      const err = clientError('closed', 'the client was closed')
      const requests = this._requests
      const subs = this._subs
      this._requests = new Map()
      this._subs = new Map()
      this._dropSocket('client closed')
      const self = this
      requests.forEach(function (req) {
        clearTimeout(req.timer)
        if (req.sub === undefined) req.reject(err)
      })
      subs.forEach(function (sub) {
        clearTimeout(sub.retryTimer)
        self._rejectWaiters(sub, err)
      })
      this._setState('closed')
    }

    /**
     * Delivers `userId`'s readings to `onReading`, across reconnects, in order, each once. Resolves
     * with the reply to the first subscribe frame; rejects (and leaves no subscription) on an error.
     * `options.since` (a history id) starts after that reading, e.g. the newest one the app
     * already has; it counts only for a new subscription.
     */
    subscribe (userId, onReading, options) {
      if (typeof onReading !== 'function') return Promise.reject(new TypeError('HeartClient: subscribe needs an onReading function'))
      const since = options ? options.since : undefined
      if (since !== undefined && since !== null && !(typeof since === 'string' && HISTORY_ID.test(since))) {
        return Promise.reject(new TypeError('HeartClient: since must be a history id like 1764115200000-0'))
      }
      if (this._state === 'closed') return Promise.reject(clientError('closed', 'the client was closed'))
      const self = this
      let sub = this._subs.get(userId)
      if (sub === undefined) {
        // status: the last state reported to onStatus; alerts: alertId → the alert last reported to onAlert.
        sub = { userId, onReading, lastId: since || null, confirmed: false, reqId: null, waiters: [], retryTimer: null, status: null, alerts: new Map() }
        this._subs.set(userId, sub)
      }
      sub.onReading = onReading
      // No timeout: the subscription lives until unsubscribe() or close(), through any outage
      // or time in the background; its subscribe frame is sent again until the server answers.
      return new Promise(function (resolve, reject) {
        sub.waiters.push({ resolve, reject })
        if (self._state === 'open' && sub.reqId === null) self._sendSubscribe(sub)
      })
    }

    /** Stops the readings of `userId` at once (none is delivered after this call). */
    unsubscribe (userId) {
      const sub = this._subs.get(userId)
      if (sub === undefined) return Promise.resolve()
      this._subs.delete(userId)
      clearTimeout(sub.retryTimer)
      this._rejectWaiters(sub, clientError('cancelled', 'unsubscribed before the subscription was confirmed'))
      // A closed socket has no subscriptions on the server: nothing to tell it.
      if (this._state !== 'open') return Promise.resolve()
      return this._request({ type: 'unsubscribe', userId }).then(noop)
    }

    /** The current heart rate of `userId`: `{ bpm, ts }`, both null when there is none. */
    get (userId) {
      return this._request({ type: 'get', userId }).then(function (frame) {
        return { bpm: frame.bpm, ts: frame.ts }
      })
    }

    /**
     * Moves the expiry of the open socket to the new token's and keeps the token for later
     * reconnects. A token the server refuses is not kept.
     */
    refresh (token) {
      if (typeof token !== 'string' || token === '') return Promise.reject(new TypeError('HeartClient: refresh needs a token'))
      const previous = this._token
      this._token = token
      this._tokenStale = false
      const self = this
      return this._request({ type: 'refresh', token }).then(function (frame) {
        return { exp: frame.exp }
      }, function (err) {
        if (err.code === 'unauthorized' && self._token === token) self._token = previous
        throw err
      })
    }

    /**
     * Publishes the socket's own user's readings (`{ bpm, ts? }`, one or an array); resolves with
     * `{ ids, duplicates }`. A reading without `ts` gets the time of this call (by the server's
     * clock, once known), so sending it again is a duplicate, not a second reading. While the socket
     * is down the readings wait, at most publishQueueMax of them, and are sent in order on the next
     * connection; one whose answer was lost with its socket is simply sent again.
     */
    publish (readings) {
      const list = Array.isArray(readings) ? readings : [readings]
      if (list.length === 0 || list.length > PUBLISH_BATCH_MAX) {
        return Promise.reject(new TypeError('HeartClient: publish takes 1 to ' + PUBLISH_BATCH_MAX + ' readings'))
      }
      const now = Date.now() + (this._clockOffsetMs === null ? 0 : this._clockOffsetMs)
      const copy = []
      for (let i = 0; i < list.length; i++) {
        const r = list[i]
        if (r === null || typeof r !== 'object' || typeof r.bpm !== 'number') {
          return Promise.reject(new TypeError('HeartClient: a reading is { bpm, ts? }'))
        }
        // Stamps never repeat: two readings of the same millisecond would be one reading to the server.
        if (typeof r.ts !== 'number') this._lastStampTs = Math.max(now, this._lastStampTs + 1)
        copy.push({ bpm: r.bpm, ts: typeof r.ts === 'number' ? r.ts : this._lastStampTs })
      }
      const promise = this._request({ type: 'publish', readings: copy }, true).then(function (frame) {
        return { ids: frame.ids, duplicates: frame.duplicates }
      })
      this._trimPublishQueue()
      return promise
    }

    // ---- requests ----

    /**
     * Sends a frame with a reqId and settles with its reply. While the client is started but not
     * open (connecting, reconnecting, the app hidden) it waits for the next socket; the timeout
     * runs only once it is sent.
     */
    _request (frame, publish) {
      const self = this
      if (this._state === 'closed') return Promise.reject(clientError('closed', 'the client was closed'))
      if (!this._started) return Promise.reject(clientError('not_connected', 'not connected: call connect() first'))
      return new Promise(function (resolve, reject) {
        const reqId = self._nextReqId++
        frame.reqId = reqId
        // publish: sent again after a lost socket instead of failing (a resend is stored once).
        self._requests.set(reqId, { frame, resolve, reject, sent: false, timer: null, publish: publish === true })
        if (self._state === 'open') self._sendRequest(reqId)
      })
    }

    _sendRequest (reqId) {
      const req = this._requests.get(reqId)
      const self = this
      req.sent = true
      req.timer = setTimeout(function () {
        if (self._requests.get(reqId) !== req) return
        self._requests.delete(reqId)
        req.reject(clientError('timeout', 'no answer to ' + req.frame.type + ' within ' + self._requestTimeoutMs + ' ms'))
      }, this._requestTimeoutMs)
      this._send(req.frame)
    }

    /** Drops the oldest waiting readings past publishQueueMax; a publish left with none rejects. */
    _trimPublishQueue () {
      let waiting = 0
      const queue = []
      this._requests.forEach(function (req, reqId) {
        if (req.publish && !req.sent) {
          waiting += req.frame.readings.length
          queue.push(reqId)
        }
      })
      for (let i = 0; waiting > this._publishQueueMax; i++) {
        const req = this._requests.get(queue[i])
        const drop = Math.min(req.frame.readings.length, waiting - this._publishQueueMax)
        req.frame.readings.splice(0, drop)
        waiting -= drop
        this._droppedReadings += drop
        if (req.frame.readings.length === 0) {
          this._requests.delete(queue[i])
          req.reject(clientError('dropped', 'the publish queue was full: these readings were dropped unsent'))
        }
      }
    }

    _sendSubscribe (sub) {
      const reqId = this._nextReqId++
      sub.reqId = reqId
      const frame = { type: 'subscribe', userId: sub.userId, reqId }
      if (sub.lastId !== null) frame.since = sub.lastId
      const self = this
      // Unanswered on an open socket: sent again, never given up (the subscription outlives any timeout).
      const req = { frame, sub, sent: true, timer: null }
      req.timer = setTimeout(function () {
        if (self._requests.get(reqId) !== req) return
        self._requests.delete(reqId)
        if (sub.reqId === reqId) sub.reqId = null
        if (self._subs.get(sub.userId) === sub && self._state === 'open') self._sendSubscribe(sub)
      }, this._requestTimeoutMs)
      this._requests.set(reqId, req)
      this._send(frame)
    }

    _rejectWaiters (sub, err) {
      const waiters = sub.waiters
      sub.waiters = []
      for (let i = 0; i < waiters.length; i++) waiters[i].reject(err)
    }

    // ---- frames ----

    _send (frame) {
      const task = this._task
      if (task === null) return
      const self = this
      const gen = this._gen
      // WeChat may never report a socket that died (no onClose): a failed send is the first sign.
      const fail = function (res) { self._lost(gen, CloseCode.ABNORMAL, (res && res.errMsg) || 'send failed', true) }
      try {
        task.send({ data: JSON.stringify(frame), fail })
      } catch (err) {
        fail({ errMsg: err && err.message })
      }
    }

    _onFrame (data) {
      this._armDeadTimer()
      if (typeof data !== 'string' || data.charAt(0) !== '{') return
      let frame
      try {
        frame = JSON.parse(data)
      } catch (err) {
        return
      }
      // The server answers: connection attempts are no longer failing.
      this._failures = 0
      switch (frame.type) {
        case 'pong':
          // Token expiry is judged by the server's clock: a phone's may be minutes off.
          if (typeof frame.ts === 'number') this._clockOffsetMs = frame.ts - Date.now()
          this._onReply(frame)
          return
        case 'reading':
          this._deliver(frame)
          return
        case 'revoked':
          this._revoked(frame.userId)
          return
        case 'status':
          this._status(this._subs.get(frame.userId), frame)
          return
        case 'alert':
          this._alert(this._subs.get(frame.userId), frame)
          return
        case 'error':
          this._onErrorFrame(frame)
          return
        default:
          this._onReply(frame)
      }
    }

    _deliver (frame) {
      const sub = this._subs.get(frame.userId)
      if (sub === undefined) return
      if (typeof frame.id === 'string') {
        // Replays after a reconnect may overlap what was already delivered.
        if (sub.lastId !== null && compareIds(frame.id, sub.lastId) <= 0) return
        sub.lastId = frame.id
      }
      try {
        sub.onReading({ userId: frame.userId, id: frame.id, bpm: frame.bpm, ts: frame.ts })
      } catch (err) {
        this._report(err)
      }
    }

    /** Reports the user's presence when it differs from what was reported last (a new offline episode counts). */
    _status (sub, frame) {
      if (sub === undefined || (frame.state !== 'online' && frame.state !== 'offline')) return
      const lastTs = typeof frame.lastTs === 'number' ? frame.lastTs : null
      const key = frame.state === 'offline' ? 'offline ' + lastTs : 'online'
      if (sub.status === key) return
      sub.status = key
      try {
        this._onStatus({ userId: sub.userId, state: frame.state, lastTs })
      } catch (err) {
        this._report(err)
      }
    }

    /** Reports an alert transition once: a live frame and a resubscription's open alerts may repeat it. */
    _alert (sub, frame) {
      if (sub === undefined || typeof frame.alertId !== 'string' || (frame.state !== 'open' && frame.state !== 'closed')) return
      const seen = sub.alerts.get(frame.alertId)
      if (seen !== undefined && (seen.state === frame.state || seen.state === 'closed')) return
      const alert = { userId: sub.userId, alertId: frame.alertId, kind: frame.kind, state: frame.state, bpm: frame.bpm, ts: frame.ts, openedAt: frame.openedAt }
      if (frame.state === 'closed') alert.closedAt = typeof frame.closedAt === 'number' ? frame.closedAt : null
      sub.alerts.delete(frame.alertId)
      sub.alerts.set(frame.alertId, alert)
      if (sub.alerts.size > REPORTED_ALERTS_MAX) this._forgetAlert(sub)
      try {
        this._onAlert(alert)
      } catch (err) {
        this._report(err)
      }
    }

    /** Forgets the oldest closed alert (an open one is still needed to tell its closing). */
    _forgetAlert (sub) {
      const it = sub.alerts.values()
      for (let a = it.next(); !a.done; a = it.next()) {
        if (a.value.state === 'closed') {
          sub.alerts.delete(a.value.alertId)
          return
        }
      }
    }

    /**
     * A (re)subscription's presence and open alerts. An alert reported open that is no longer open
     * closed while the client was away: reported closed, with the open one's fields and closedAt null.
     */
    _subscribedState (sub, frame) {
      if (frame.state !== undefined) this._status(sub, frame)
      if (!Array.isArray(frame.alerts)) return
      const listed = frame.alerts.filter(function (a) { return a !== null && typeof a === 'object' })
      const open = {}
      for (let i = 0; i < listed.length; i++) open[listed[i].alertId] = true
      const gone = []
      sub.alerts.forEach(function (alert) {
        if (alert.state === 'open' && open[alert.alertId] !== true) gone.push(alert)
      })
      // Closings first: an app clears what ended before it shows what is open now.
      for (let i = 0; i < gone.length; i++) {
        const a = gone[i]
        this._alert(sub, { alertId: a.alertId, kind: a.kind, state: 'closed', bpm: a.bpm, ts: a.ts, openedAt: a.openedAt, closedAt: null })
      }
      for (let i = 0; i < listed.length; i++) {
        const a = listed[i]
        this._alert(sub, { alertId: a.alertId, kind: a.kind, state: 'open', bpm: a.bpm, ts: a.ts, openedAt: a.openedAt })
      }
    }

    _revoked (userId) {
      const sub = this._subs.get(userId)
      if (sub === undefined) return
      this._subs.delete(userId)
      clearTimeout(sub.retryTimer)
      this._rejectWaiters(sub, clientError('forbidden', 'access to ' + userId + ' was withdrawn'))
      try {
        this._onRevoked(userId)
      } catch (err) {
        this._report(err)
      }
    }

    _onReply (frame) {
      if (frame.reqId === undefined) return
      const req = this._requests.get(frame.reqId)
      if (req === undefined) return
      this._requests.delete(frame.reqId)
      clearTimeout(req.timer)
      if (req.sub === undefined) {
        req.resolve(frame)
        return
      }
      const sub = req.sub
      if (sub.reqId === frame.reqId) sub.reqId = null
      if (this._subs.get(sub.userId) !== sub || frame.type !== 'subscribed') return
      this._answered.set(frame.reqId, sub)
      // With no reading seen yet, resume from where the subscription started.
      if (sub.lastId === null && typeof frame.lastId === 'string') sub.lastId = frame.lastId
      const result = { current: frame.current }
      if (frame.truncated === true) result.truncated = true
      const wasConfirmed = sub.confirmed
      sub.confirmed = true
      const waiters = sub.waiters
      sub.waiters = []
      for (let i = 0; i < waiters.length; i++) waiters[i].resolve(result)
      if (wasConfirmed && waiters.length === 0) {
        try {
          this._onResubscribed(sub.userId, result)
        } catch (err) {
          this._report(err)
        }
      }
      if (this._subs.get(sub.userId) === sub) this._subscribedState(sub, frame)
    }

    _onErrorFrame (frame) {
      const err = clientError(frame.code, frame.message)
      const req = frame.reqId === undefined ? undefined : this._requests.get(frame.reqId)
      if (req !== undefined) {
        this._requests.delete(frame.reqId)
        clearTimeout(req.timer)
        if (req.sub === undefined) {
          req.reject(err)
          return
        }
        if (req.sub.reqId === frame.reqId) req.sub.reqId = null
        this._subscribeFailed(req.sub, err)
        return
      }
      // An error after `subscribed`: the store failed during the replay and the server dropped the subscription.
      const sub = frame.reqId === undefined ? undefined : this._answered.get(frame.reqId)
      if (sub !== undefined) {
        this._answered.delete(frame.reqId)
        this._subscribeFailed(sub, err)
        return
      }
      this._report(err)
    }

    /** The server refused or dropped a subscription: retry what a retry can fix, give up the rest. */
    _subscribeFailed (sub, err) {
      if (this._subs.get(sub.userId) !== sub) return
      if (sub.confirmed && TRANSIENT_ERRORS[err.code] === true) {
        // A resubscription during a store outage: keep the subscription and try again shortly.
        const self = this
        clearTimeout(sub.retryTimer)
        sub.retryTimer = setTimeout(function () {
          sub.retryTimer = null
          if (self._subs.get(sub.userId) === sub && self._state === 'open' && sub.reqId === null) self._sendSubscribe(sub)
        }, this._backoffDelay(this._failures + 1))
        return
      }
      if (sub.confirmed && err.code === 'forbidden') {
        // The owner withdrew access while this client was away.
        this._revoked(sub.userId)
        return
      }
      this._subs.delete(sub.userId)
      clearTimeout(sub.retryTimer)
      this._rejectWaiters(sub, err)
      if (sub.confirmed) this._report(err)
    }

    _report (err) {
      try {
        this._onError(err)
      } catch (ignored) {
        // The application's error hook failed: nothing sensible is left to tell.
      }
    }

    // ---- the connection ----

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

    /** Opens a socket, first getting a new token when the current one has expired. */
    _dial (state) {
      clearTimeout(this._reconnectTimer)
      this._reconnectTimer = null
      this._setState(state)
      const gen = ++this._gen
      const self = this
      const exp = tokenExp(this._token)
      const now = Date.now() + (this._clockOffsetMs === null ? 0 : this._clockOffsetMs)
      const expired = this._tokenStale || (exp !== null && exp * 1000 <= now)
      if (!expired) {
        this._openSocket(gen)
        return
      }
      if (this._onTokenExpired === null) {
        // Only the client's clock says so: let the server decide.
        this._openSocket(gen)
        return
      }
      Promise.resolve().then(function () { return self._onTokenExpired() }).then(function (token) {
        if (typeof token !== 'string' || token === '') throw new TypeError('onTokenExpired must resolve with a token')
        // Kept even if the client stopped meanwhile (app hidden): the next connection uses it.
        self._token = token
        self._tokenStale = false
        if (gen !== self._gen) return
        // Used even if it looks expired too: a wrong device clock must not loop here.
        self._openSocket(gen)
      }).catch(function (err) {
        if (gen !== self._gen) return
        self._report(err)
        self._lost(gen, CloseCode.ABNORMAL, 'could not renew the token', false)
      })
    }

    _openSocket (gen) {
      const self = this
      let task
      try {
        task = this._wx.connectSocket({
          url: this._url,
          header: { Authorization: 'Bearer ' + this._token },
          fail: function (res) {
            const errMsg = (res && res.errMsg) || ''
            // Not retried: no socket frees up by waiting while this app holds five (see README).
            const fatal = errMsg.indexOf(TOO_MANY_SOCKETS) === -1
              ? null
              : clientError('too_many_sockets', 'connectSocket failed: ' + errMsg + ' (a mini program may have 5 sockets: use one client per app)')
            self._lost(gen, CloseCode.ABNORMAL, errMsg, true, null, fatal)
          }
        })
      } catch (err) {
        this._lost(gen, CloseCode.ABNORMAL, err && err.message, false)
        return
      }
      if (gen !== this._gen) {
        // connectSocket failed synchronously (fail already ran): this task is not ours any more.
        if (task) this._closeTask(task, 'superseded')
        return
      }
      this._task = task
      this._taskOpened = false
      task.onOpen(function () {
        if (gen === self._gen) self._opened()
      })
      task.onMessage(function (res) {
        if (gen === self._gen) self._onFrame(res.data)
      })
      task.onClose(function (res) {
        self._lost(gen, res.code, res.reason, false)
      })
      // WeChat follows a failed connection with onClose on most platforms, not all: treat it as the end.
      task.onError(function (res) {
        const refusal = res && typeof res.statusCode === 'number' ? { status: res.statusCode, body: typeof res.body === 'string' ? res.body : '' } : null
        self._lost(gen, CloseCode.ABNORMAL, res && res.errMsg, true, refusal)
      })
      // Also bounds the handshake: a connection that never opens is given up like a dead one.
      this._armDeadTimer()
    }

    _opened () {
      this._taskOpened = true
      this._renewedForFailures = false
      this._setState('open')
      const self = this
      // The first ping at once: its pong gives the server's clock before the token is next judged.
      this._send({ type: 'ping' })
      this._pingTimer = setInterval(function () { self._send({ type: 'ping' }) }, this._pingIntervalMs)
      this._armDeadTimer()
      // Not twice: onStateChange('open') above may have subscribed already.
      this._subs.forEach(function (sub) { if (sub.reqId === null) self._sendSubscribe(sub) })
      this._requests.forEach(function (req, reqId) { if (!req.sent) self._sendRequest(reqId) })
    }

    /** Restarts the timer that declares the connection dead when nothing arrives. */
    _armDeadTimer () {
      clearTimeout(this._deadTimer)
      const self = this
      const gen = this._gen
      this._deadTimer = setTimeout(function () {
        self._lost(gen, CloseCode.ABNORMAL, 'nothing received for ' + self._deadAfterMs + ' ms', true)
      }, this._deadAfterMs)
    }

    _closeTask (task, reason) {
      try {
        // Mini programs (like browsers) may only close with 1000 or 3000-4999.
        task.close({ code: CloseCode.NORMAL, reason: cutUtf8(reason, CLOSE_REASON_MAX_BYTES), fail: noop })
      } catch (err) {
        // Already closed or closing.
      }
    }

    /** Gives up the current socket (if any) and everything that was waiting on it. */
    _dropSocket (reason) {
      this._gen++
      clearTimeout(this._reconnectTimer)
      clearInterval(this._pingTimer)
      clearTimeout(this._deadTimer)
      this._reconnectTimer = this._pingTimer = this._deadTimer = null
      const task = this._task
      this._task = null
      if (task !== null) this._closeTask(task, reason)
      this._answered.clear()
      const err = clientError('disconnected', 'connection lost before the answer came (' + reason + ')')
      const self = this
      this._requests.forEach(function (req, reqId) {
        if (!req.sent) return
        clearTimeout(req.timer)
        if (req.publish) {
          // Back in the queue, in its place: sent again on the next connection.
          req.sent = false
          req.timer = null
          return
        }
        self._requests.delete(reqId)
        // Subscriptions are sent again on the next connection; other requests fail.
        if (req.sub === undefined) req.reject(err)
        else if (req.sub.reqId === reqId) req.sub.reqId = null
      })
      this._trimPublishQueue()
      this._subs.forEach(function (sub) {
        clearTimeout(sub.retryTimer)
        sub.retryTimer = null
      })
    }

    /**
     * The socket of generation `gen` ended with `code` (`refusal`: the HTTP status and body of a
     * refused handshake, where the platform reports them; `fatal`: an error that ends the client):
     * reconnect as that code asks, or stop.
     */
    _lost (gen, code, reason, closeIt, refusal, fatal) {
      if (gen !== this._gen) return
      if (!closeIt) this._task = null
      const opened = this._taskOpened
      this._dropSocket(String(reason || code))
      if (!this._started || this._hidden) return
      let final = null
      let delay = null
      if (fatal) {
        final = fatal
      } else if (code === CloseCode.TOKEN_EXPIRED) {
        if (this._onTokenExpired === null) {
          final = clientError('token_expired', 'the token expired and there is no onTokenExpired to renew it')
        } else {
          this._tokenStale = true
          delay = 0
        }
      } else if (refusal && RETRY_STATUSES[refusal.status] !== true) {
        final = clientError('refused', 'the server refused the connection with HTTP ' + refusal.status)
        final.status = refusal.status
        final.body = refusal.body
      } else if (code === CloseCode.GOING_AWAY && this._failures === 0) {
        // The server is shutting down: another instance (or its replacement) answers soon.
        delay = Math.random() * GOING_AWAY_SPREAD_MS
      } else if (code === CloseCode.POLICY || code === CloseCode.TOO_BIG) {
        // The server objected to what this client sent: retrying quickly would only repeat it.
        delay = this._maxMs / 2 + Math.random() * this._maxMs / 2
      } else if (code === CloseCode.TRY_AGAIN_LATER) {
        const base = Math.min(this._maxMs, Math.max(this._initialMs * TRY_AGAIN_LATER_FACTOR, this._initialMs * Math.pow(2, this._failures)))
        delay = base / 2 + Math.random() * base / 2
      } else {
        delay = this._backoffDelay(this._failures)
        if (!opened && !refusal && !this._renewedForFailures && this._onTokenExpired !== null && this._failures + 1 >= RENEW_AFTER_FAILURES) {
          // Maybe a token the server's clock says has expired: ask for a new one, once per streak.
          this._renewedForFailures = true
          this._tokenStale = true
        }
      }
      const info = { code, reason: reason ? String(reason) : '', opened, retryInMs: delay }
      if (refusal) {
        info.status = refusal.status
        info.body = refusal.body
      }
      try {
        this._onDisconnect(info)
      } catch (err) {
        this._report(err)
      }
      if (final !== null) {
        this._report(final)
        this.close()
        return
      }
      // onDisconnect may have closed the client.
      if (!this._started || this._hidden) return
      this._failures++
      this._setState('reconnecting')
      const self = this
      this._reconnectTimer = setTimeout(function () {
        self._reconnectTimer = null
        self._dial('reconnecting')
      }, delay)
    }

    /** Exponential backoff with full jitter. */
    _backoffDelay (failures) {
      return Math.random() * Math.min(this._maxMs, this._initialMs * Math.pow(2, Math.min(failures, 30)))
    }

    // ---- app visibility ----

    _registerAppHooks () {
      const api = this._wx
      if (this._appHooks !== null || typeof api.onAppHide !== 'function' || typeof api.onAppShow !== 'function') return
      const self = this
      this._appHooks = {
        hide: function () { self._hide() },
        show: function () { self._show() }
      }
      api.onAppHide(this._appHooks.hide)
      api.onAppShow(this._appHooks.show)
    }

    _unregisterAppHooks () {
      const hooks = this._appHooks
      if (hooks === null) return
      this._appHooks = null
      if (typeof this._wx.offAppHide === 'function') this._wx.offAppHide(hooks.hide)
      if (typeof this._wx.offAppShow === 'function') this._wx.offAppShow(hooks.show)
    }

    /** WeChat cuts sockets of apps in the background: close cleanly now and resume on show with `since`. */
    _hide () {
      if (!this._started || this._hidden) return
      this._hidden = true
      this._dropSocket('app hidden')
      this._setState('idle')
    }

    _show () {
      if (!this._started || !this._hidden) return
      this._hidden = false
      this._failures = 0
      this._dial('reconnecting')
    }
  }

  return { HeartClient, CloseCode, compareIds }
})
