// The heart-gateway live demo: history from GET /heart/:userId/readings, then live readings from
// the /heart/current WebSocket through the mini-program client (client/heart-client.js, with
// client/ws-adapter.js making a `wx` of the browser's WebSocket). It reconnects and resumes; this
// page only shows what it reports, whether the user is online (`status` frames) and their open
// alerts (`alert` frames), both read from the client's socket by frameTap. Plain browser JavaScript, no build step.
'use strict'

;(() => {
  const WINDOW_MS = 5 * 60 * 1000
  const HISTORY_LIMIT = 300
  /** Readings kept in memory at most, whatever their rate. */
  const POINTS_MAX = 5000
  /** A longer silence between two readings is drawn as a gap, not a line. */
  const GAP_MS = 30000
  /** The least room between two time labels of the chart. */
  const LABEL_GAP_PX = 8
  const USER_ID = /^[A-Za-z0-9_-]{1,64}$/
  const { HeartClient } = self.heartClient
  // A browser cannot set headers on the handshake: the token goes as ?access_token=.
  const wx = self.heartWsAdapter.wxFromWebSocket(WebSocket, { tokenInQuery: true })

  const $ = (id) => document.getElementById(id)
  const ui = {
    form: $('login'),
    user: $('user'),
    token: $('token'),
    devLogin: $('dev-login'),
    disconnect: $('disconnect'),
    now: $('now'),
    presence: $('presence'),
    alerts: $('alerts'),
    bpm: $('bpm'),
    updated: $('updated'),
    state: $('state'),
    closeCode: $('close-code'),
    reconnects: $('reconnects'),
    message: $('message'),
    chart: $('chart')
  }

  /** Server clock minus this browser's (from the Date header), so the window ends at the server's "now". */
  let clockOffset = 0
  const now = () => Date.now() + clockOffset

  /** The viewer of the user being watched; replaced on every Connect. */
  let viewer = null

  function setState (state) {
    ui.state.textContent = state
    ui.state.dataset.state = state
    ui.disconnect.disabled = state === 'closed'
  }

  function say (text, isError = false) {
    ui.message.textContent = text
    ui.message.classList.toggle('error', isError)
  }

  async function errorMessage (res) {
    try {
      const body = await res.json()
      if (typeof body.message === 'string') return body.message
    } catch {}
    return `HTTP ${res.status}`
  }

  /**
   * The client delivers readings only, and ignores frames it does not know. What `subscribed`,
   * `status` and `alert` frames say about presence and alerts is read here, from the same socket, by wrapping the `wx`
   * the client is given: every JSON frame goes to `onFrame` before the client sees it.
   */
  function frameTap (api, onFrame) {
    return Object.assign({}, api, {
      connectSocket (opts) {
        const task = api.connectSocket(opts)
        task.onMessage((res) => {
          if (typeof res.data !== 'string' || res.data.charAt(0) !== '{') return
          let frame
          try {
            frame = JSON.parse(res.data)
          } catch {
            return
          }
          onFrame(frame)
        })
        return task
      }
    })
  }

  /** `hh:mm:ss` in this browser's time zone. */
  function clock (ms) {
    const d = new Date(ms)
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':')
  }

  /** `state` of `subscribed` or `status`; null: not known (not connected yet). */
  function showPresence (state, lastTs) {
    if (state === null) delete ui.now.dataset.presence
    else ui.now.dataset.presence = state
    const offline = state === 'offline'
    ui.presence.hidden = !offline
    ui.presence.textContent = !offline ? '' : typeof lastTs === 'number' ? `offline since ${clock(lastTs)}` : 'offline: no reading yet'
  }

  const ALERT_TITLES = { high: 'High heart rate', low: 'Low heart rate', offline: 'Offline' }

  /** A red banner for each open alert episode (`alertId` → the alert's fields), oldest first. */
  function showAlerts (open) {
    const banners = [...open.values()].sort((a, b) => a.openedAt - b.openedAt).map((alert) => {
      const banner = document.createElement('div')
      banner.className = 'alert'
      banner.dataset.alertId = alert.alertId
      banner.dataset.kind = alert.kind
      const bpm = typeof alert.bpm === 'number' ? ` · ${alert.kind === 'offline' ? 'last ' : ''}${alert.bpm} bpm` : ''
      const when = document.createElement('span')
      when.className = 'when'
      when.textContent = ` · since ${clock(alert.openedAt)}`
      banner.append(`${ALERT_TITLES[alert.kind] ?? alert.kind}${bpm}`, when)
      return banner
    })
    ui.alerts.replaceChildren(...banners)
  }

  class Viewer {
    constructor (userId, token) {
      this.userId = userId
      this.token = token
      /** { ts, bpm }, in ts order. */
      this.points = []
      this.currentTs = -Infinity
      this.client = null
      this.reconnects = 0
      this.stopped = false
      /** Open alert episodes, by alertId. */
      this.alerts = new Map()
    }

    async start () {
      ui.reconnects.textContent = '0'
      ui.closeCode.textContent = '–'
      ui.bpm.textContent = '--'
      delete ui.bpm.dataset.ts
      ui.updated.textContent = 'no reading yet'
      showPresence(null)
      showAlerts(this.alerts)
      say('')
      setState('connecting')
      const since = await this.preload()
      if (this.stopped) return
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
      this.client = new HeartClient({
        url: `${scheme}//${location.host}/heart/current`,
        token: this.token,
        wx: frameTap(wx, (frame) => this.frame(frame)),
        onStateChange: (state) => { if (!this.stopped) setState(state) },
        onDisconnect: (info) => { void this.disconnected(info) },
        onResubscribed: (_userId, result) => this.subscribed(result),
        onRevoked: (userId) => this.stop(`${userId} stopped sharing their heart rate`, true),
        onError: (err) => {
          if (err.code === 'token_expired') this.stop('token expired: log in again, then connect', true)
          else say(`server: ${err.message}`, true)
        }
      })
      this.client.connect()
      const reading = (r) => {
        this.add(r)
        scheduleDraw()
      }
      this.client.subscribe(this.userId, reading, { since }).then((result) => this.subscribed(result), (err) => {
        if (err.code !== 'closed') this.stop(`server: ${err.message}`, true)
      })
    }

    /** A frame of the socket, before the client handles it. */
    frame (frame) {
      if (this.stopped || frame.userId !== this.userId) return
      if (frame.type === 'subscribed' || frame.type === 'status') showPresence(frame.state, frame.lastTs)
      if (frame.type === 'subscribed' && Array.isArray(frame.alerts)) {
        // The open ones now: after a reconnect, those closed meanwhile are gone, those opened are there.
        this.alerts = new Map(frame.alerts.filter((a) => a.state === 'open').map((a) => [a.alertId, a]))
        showAlerts(this.alerts)
      } else if (frame.type === 'alert') {
        if (frame.state === 'open') this.alerts.set(frame.alertId, frame)
        else this.alerts.delete(frame.alertId)
        showAlerts(this.alerts)
      }
    }

    stop (text, isError = false) {
      this.stopped = true
      if (this.client !== null) this.client.close()
      setState('closed')
      say(text, isError)
    }

    api (path) {
      return fetch(path, { headers: { authorization: `Bearer ${this.token}` }, cache: 'no-store' })
    }

    /** The last minutes from the HTTP API; resolves with the newest id, the live subscription's `since`. */
    async preload () {
      let res
      try {
        res = await this.api(`/heart/${encodeURIComponent(this.userId)}/readings?limit=${HISTORY_LIMIT}`)
      } catch {
        // The client retries the socket until the server is back; the chart starts with live readings then.
        return null
      }
      if (this.stopped) return null
      if (res.status === 401 || res.status === 403) {
        this.stop(await errorMessage(res), true)
        return null
      }
      if (!res.ok) {
        say(`history: ${await errorMessage(res)}`, true)
        return null
      }
      const body = await res.json()
      if (this.stopped) return null
      const serverNow = Date.parse(res.headers.get('date') ?? '')
      // The Date header has a resolution of one second: only a larger skew is corrected.
      if (Number.isFinite(serverNow) && Math.abs(serverNow - Date.now()) > 2000) clockOffset = serverNow - Date.now()
      for (const r of body.readings) this.add(r)
      const newest = body.readings.at(-1)
      return newest === undefined ? null : newest.id
    }

    subscribed (result) {
      if (result.current !== null && this.points.length === 0) showBpm(result.current.bpm, result.current.ts)
      say(result.truncated === true ? 'some readings were trimmed from history while disconnected' : '')
    }

    async disconnected (info) {
      ui.closeCode.textContent = String(info.code)
      // The client stops by itself (token expired): onError says why.
      if (info.retryInMs === null || this.stopped) return
      this.reconnects++
      ui.reconnects.textContent = String(this.reconnects)
      say(`closed (${info.code}): reconnecting in ${(info.retryInMs / 1000).toFixed(1)} s`)
      if (info.opened) return
      // A refused upgrade reaches a browser as 1006 without its reason: ask the HTTP API why.
      try {
        const res = await this.api(`/heart/${encodeURIComponent(this.userId)}/readings?limit=1`)
        if (!this.stopped && (res.status === 401 || res.status === 403)) this.stop(await errorMessage(res), true)
      } catch {}
    }

    add (reading) {
      const points = this.points
      let i = points.length
      while (i > 0 && points[i - 1].ts > reading.ts) i--
      points.splice(i, 0, { ts: reading.ts, bpm: reading.bpm })
      if (points.length > POINTS_MAX) points.splice(0, points.length - POINTS_MAX)
      // Like the server's current value: an older reading arriving late does not replace a newer one.
      if (reading.ts >= this.currentTs) {
        this.currentTs = reading.ts
        showBpm(reading.bpm, reading.ts)
      }
    }
  }

  function showBpm (bpm, ts) {
    ui.bpm.textContent = String(bpm)
    ui.bpm.dataset.ts = String(ts)
    showAge()
  }

  function showAge () {
    const ts = Number(ui.bpm.dataset.ts)
    if (!Number.isFinite(ts)) return
    const s = Math.max(0, Math.round((now() - ts) / 1000))
    ui.updated.textContent = s < 2 ? 'just now' : s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`
  }

  let drawPending = false
  function scheduleDraw () {
    if (drawPending) return
    drawPending = true
    requestAnimationFrame(() => {
      drawPending = false
      draw()
    })
  }

  function draw () {
    const canvas = ui.chart
    const dpr = window.devicePixelRatio || 1
    const width = canvas.clientWidth
    const height = canvas.clientHeight
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr)
      canvas.height = Math.round(height * dpr)
    }
    const ctx = canvas.getContext('2d')
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0)
    ctx.clearRect(0, 0, width, height)

    const end = now()
    const start = end - WINDOW_MS
    const points = viewer === null ? [] : viewer.points.filter((p) => p.ts >= start)
    canvas.dataset.points = String(points.length)

    let lo = Infinity
    let hi = -Infinity
    for (const p of points) {
      lo = Math.min(lo, p.bpm)
      hi = Math.max(hi, p.bpm)
    }
    if (points.length === 0) {
      lo = 60
      hi = 100
    }
    lo = Math.floor((lo - 5) / 10) * 10
    hi = Math.ceil((hi + 5) / 10) * 10
    if (hi - lo < 30) hi = lo + 30

    const pad = { left: 40, right: 12, top: 10, bottom: 22 }
    const plotW = width - pad.left - pad.right
    const plotH = height - pad.top - pad.bottom
    const x = (ts) => pad.left + (Math.min(ts, end) - start) / WINDOW_MS * plotW
    const y = (bpm) => pad.top + (hi - bpm) / (hi - lo) * plotH

    const style = getComputedStyle(document.documentElement)
    ctx.font = '11px system-ui, sans-serif'
    ctx.lineWidth = 1
    ctx.strokeStyle = style.getPropertyValue('--line').trim()
    ctx.fillStyle = style.getPropertyValue('--muted').trim()

    const step = hi - lo > 80 ? 20 : 10
    ctx.textAlign = 'right'
    ctx.textBaseline = 'middle'
    for (let v = lo; v <= hi; v += step) {
      ctx.beginPath()
      ctx.moveTo(pad.left, Math.round(y(v)) + 0.5)
      ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5)
      ctx.stroke()
      ctx.fillText(String(v), pad.left - 6, y(v))
    }
    ctx.textBaseline = 'top'
    // From "now" leftwards; a label that would run into the one to its right is left out (phone widths).
    let labelsFrom = Infinity
    for (let m = 0; m <= 5; m++) {
      const gx = Math.round(x(end - m * 60000)) + 0.5
      ctx.beginPath()
      ctx.moveTo(gx, pad.top)
      ctx.lineTo(gx, pad.top + plotH)
      ctx.stroke()
      const label = m === 0 ? 'now' : `-${m} min`
      const w = ctx.measureText(label).width
      const align = m === 0 ? 'right' : m === 5 ? 'left' : 'center'
      const left = align === 'right' ? gx - w : align === 'center' ? gx - w / 2 : gx
      if (left + w + LABEL_GAP_PX > labelsFrom) continue
      labelsFrom = left
      ctx.textAlign = align
      ctx.fillText(label, gx, pad.top + plotH + 6)
    }

    if (points.length === 0) return
    const accent = style.getPropertyValue('--accent').trim()
    ctx.strokeStyle = accent
    ctx.fillStyle = accent
    ctx.lineWidth = 2
    ctx.lineJoin = 'round'
    ctx.beginPath()
    for (let i = 0; i < points.length; i++) {
      const p = points[i]
      if (i === 0 || p.ts - points[i - 1].ts > GAP_MS) ctx.moveTo(x(p.ts), y(p.bpm))
      else ctx.lineTo(x(p.ts), y(p.bpm))
    }
    ctx.stroke()
    for (let i = 0; i < points.length; i++) {
      const p = points[i]
      const alone = (i === 0 || p.ts - points[i - 1].ts > GAP_MS) && (i === points.length - 1 || points[i + 1].ts - p.ts > GAP_MS)
      if (!alone && i !== points.length - 1) continue
      ctx.beginPath()
      ctx.arc(x(p.ts), y(p.bpm), i === points.length - 1 ? 4 : 2, 0, 2 * Math.PI)
      ctx.fill()
    }
  }

  function connect () {
    const userId = ui.user.value.trim()
    const token = ui.token.value.trim()
    if (!USER_ID.test(userId) || token === '') {
      ui.form.reportValidity()
      return
    }
    if (viewer !== null) viewer.stop('')
    viewer = new Viewer(userId, token)
    void viewer.start()
    draw()
  }

  /** POST /auth/dev exists only with ENABLE_DEV_LOGIN outside production; an empty body answers 400 when it does. */
  async function probeDevLogin () {
    try {
      const res = await fetch('/auth/dev', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
      ui.devLogin.hidden = res.status === 404 || res.status === 501
    } catch {}
  }

  async function devLogin () {
    const userId = ui.user.value.trim()
    if (!USER_ID.test(userId)) {
      ui.user.reportValidity()
      return
    }
    ui.devLogin.disabled = true
    try {
      const res = await fetch('/auth/dev', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId }) })
      if (res.status === 404) {
        ui.devLogin.hidden = true
        say('dev login is not enabled on this server: paste a token', true)
        return
      }
      if (!res.ok) {
        say(`dev login: ${await errorMessage(res)}`, true)
        return
      }
      const body = await res.json()
      ui.token.value = body.token
      say(`dev token for ${body.userId}, valid ${Math.round(body.expiresIn / 60)} min: connect to start`)
    } catch {
      say('dev login: server unreachable', true)
    } finally {
      ui.devLogin.disabled = false
    }
  }

  ui.form.addEventListener('submit', (event) => {
    event.preventDefault()
    connect()
  })
  ui.devLogin.addEventListener('click', () => { void devLogin() })
  ui.disconnect.addEventListener('click', () => {
    if (viewer !== null) viewer.stop('disconnected')
  })
  window.addEventListener('resize', scheduleDraw)
  setInterval(() => {
    showAge()
    draw()
  }, 1000)

  // `#user=…&token=…` fills the form and connects (a link printed by a script); the fragment never
  // reaches a server, and is removed from the address bar so the token is not bookmarked.
  const fromHash = new URLSearchParams(location.hash.slice(1))
  if (fromHash.has('user')) ui.user.value = fromHash.get('user')
  if (fromHash.has('token')) {
    ui.token.value = fromHash.get('token')
    history.replaceState(null, '', location.pathname + location.search)
  }
  draw()
  void probeDevLogin()
  if (ui.user.value !== '' && ui.token.value !== '') connect()
})()
