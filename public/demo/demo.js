// The heart-gateway live demo: history from GET /heart/:userId/readings, then live readings from
// the /heart/current WebSocket (protocol: docs/protocol.md). Plain browser JavaScript, no build step.
'use strict'

;(() => {
  const WINDOW_MS = 5 * 60 * 1000
  const HISTORY_LIMIT = 300
  /** Readings kept in memory at most, whatever their rate. */
  const POINTS_MAX = 5000
  const BACKOFF_MIN_MS = 500
  const BACKOFF_MAX_MS = 30000
  /** A longer silence between two readings is drawn as a gap, not a line. */
  const GAP_MS = 30000
  const CLOSE_GOING_AWAY = 1001
  const CLOSE_TOKEN_EXPIRED = 4001
  const USER_ID = /^[A-Za-z0-9_-]{1,64}$/

  const $ = (id) => document.getElementById(id)
  const ui = {
    form: $('login'),
    user: $('user'),
    token: $('token'),
    devLogin: $('dev-login'),
    disconnect: $('disconnect'),
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

  /** History ids are "<ms>-<seq>", each below 2^64: compared as numbers, not as text. */
  function compareIds (a, b) {
    const [am, as] = a.split('-').map(BigInt)
    const [bm, bs] = b.split('-').map(BigInt)
    if (am !== bm) return am < bm ? -1 : 1
    return as === bs ? 0 : as < bs ? -1 : 1
  }

  async function errorMessage (res) {
    try {
      const body = await res.json()
      if (typeof body.message === 'string') return body.message
    } catch {}
    return `HTTP ${res.status}`
  }

  class Viewer {
    constructor (userId, token) {
      this.userId = userId
      this.token = token
      /** { ts, bpm }, in ts order. */
      this.points = []
      /** Newest history id seen: the `since` of every (re)subscription. */
      this.lastId = null
      this.currentTs = -Infinity
      this.preloaded = false
      this.ws = null
      this.timer = null
      this.failures = 0
      this.reconnects = 0
      this.stopped = false
    }

    start () {
      ui.reconnects.textContent = '0'
      ui.closeCode.textContent = '–'
      ui.bpm.textContent = '--'
      delete ui.bpm.dataset.ts
      ui.updated.textContent = 'no reading yet'
      say('')
      void this.attempt('connecting')
    }

    stop (text, isError = false) {
      this.stopped = true
      clearTimeout(this.timer)
      const ws = this.ws
      this.ws = null
      if (ws !== null) ws.close(1000, 'bye')
      setState('closed')
      say(text, isError)
    }

    api (path) {
      return fetch(path, { headers: { authorization: `Bearer ${this.token}` }, cache: 'no-store' })
    }

    /** One connection attempt: the history first (once), then the socket. */
    async attempt (state) {
      setState(state)
      if (!this.preloaded) {
        let res
        try {
          res = await this.api(`/heart/${encodeURIComponent(this.userId)}/readings?limit=${HISTORY_LIMIT}`)
        } catch {
          if (!this.stopped) this.retry('server unreachable')
          return
        }
        if (this.stopped) return
        if (res.status === 401 || res.status === 403) {
          this.stop(await errorMessage(res), true)
          return
        }
        if (!res.ok) {
          this.retry(`history: ${await errorMessage(res)}`)
          return
        }
        const body = await res.json()
        if (this.stopped) return
        const serverNow = Date.parse(res.headers.get('date') ?? '')
        // The Date header has a resolution of one second: only a larger skew is corrected.
        if (Number.isFinite(serverNow) && Math.abs(serverNow - Date.now()) > 2000) clockOffset = serverNow - Date.now()
        for (const r of body.readings) this.add(r)
        this.preloaded = true
      }
      this.open()
    }

    open () {
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
      const ws = new WebSocket(`${scheme}//${location.host}/heart/current?access_token=${encodeURIComponent(this.token)}`)
      this.ws = ws
      let opened = false
      ws.onopen = () => {
        opened = true
        setState('open')
        const frame = { type: 'subscribe', userId: this.userId }
        if (this.lastId !== null) frame.since = this.lastId
        ws.send(JSON.stringify(frame))
      }
      ws.onmessage = (event) => {
        if (this.ws !== ws) return
        let frame
        try {
          frame = JSON.parse(event.data)
        } catch {
          return
        }
        this.frame(frame)
      }
      ws.onclose = (event) => {
        if (this.ws !== ws) return
        this.ws = null
        void this.closed(event.code, opened)
      }
    }

    frame (frame) {
      if (frame.userId !== undefined && frame.userId !== this.userId) return
      switch (frame.type) {
        case 'subscribed':
          this.failures = 0
          if (frame.current !== null && this.points.length === 0) showBpm(frame.current.bpm, frame.current.ts)
          say(frame.truncated === true ? 'some readings were trimmed from history while disconnected' : '')
          break
        case 'reading':
          // Already seen (preloaded, or replayed twice across a reconnect).
          if (frame.id !== null && this.lastId !== null && compareIds(frame.id, this.lastId) <= 0) return
          this.add(frame)
          scheduleDraw()
          break
        case 'revoked':
          this.stop(`${frame.userId} stopped sharing their heart rate`, true)
          break
        case 'error':
          say(`server: ${frame.message}`, true)
          break
      }
    }

    add (reading) {
      if (reading.id !== null && reading.id !== undefined) this.lastId = reading.id
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

    async closed (code, opened) {
      ui.closeCode.textContent = String(code)
      if (this.stopped) return
      if (code === CLOSE_TOKEN_EXPIRED) {
        this.stop('token expired: log in again, then connect', true)
        return
      }
      if (!opened) {
        // A refused upgrade reaches a browser as 1006 without its reason: ask the HTTP API why.
        try {
          const res = await this.api(`/heart/${encodeURIComponent(this.userId)}/readings?limit=1`)
          if (this.stopped) return
          if (res.status === 401 || res.status === 403) {
            this.stop(await errorMessage(res), true)
            return
          }
        } catch {}
        if (this.stopped) return
      }
      this.retry(`closed (${code})`, code === CLOSE_GOING_AWAY)
    }

    /** Schedules the next attempt: at once (with jitter) when the server asked, else exponential backoff with jitter. */
    retry (reason, soon = false) {
      this.failures++
      const ceiling = soon ? 250 : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.failures - 1))
      const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2)
      setState('reconnecting')
      say(`${reason}: reconnecting in ${(delay / 1000).toFixed(1)} s`)
      this.timer = setTimeout(() => {
        this.reconnects++
        ui.reconnects.textContent = String(this.reconnects)
        void this.attempt('reconnecting')
      }, delay)
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
    for (let m = 5; m >= 0; m--) {
      const gx = Math.round(x(end - m * 60000)) + 0.5
      ctx.beginPath()
      ctx.moveTo(gx, pad.top)
      ctx.lineTo(gx, pad.top + plotH)
      ctx.stroke()
      ctx.textAlign = m === 0 ? 'right' : m === 5 ? 'left' : 'center'
      ctx.fillText(m === 0 ? 'now' : `-${m} min`, gx, pad.top + plotH + 6)
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
    viewer.start()
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
