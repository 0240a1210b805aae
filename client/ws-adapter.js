/**
 * ws-adapter: a `wx` (the part heart-client.js uses: `connectSocket` and its SocketTask) made of a
 * WebSocket class, so the one client runs outside mini programs too: the browser's `WebSocket`
 * (the demo page) or Node's `ws` package (the CLI's `watch`).
 *
 *   const { HeartClient } = require('./heart-client.js')
 *   const { wxFromWebSocket } = require('./ws-adapter.js')
 *   new HeartClient({ url, token, wx: wxFromWebSocket(require('ws')) })
 *
 * A browser cannot set headers on a WebSocket handshake: there, pass `{ tokenInQuery: true }` and
 * the client's `Authorization: Bearer …` goes as `?access_token=…` instead. Same constraints as
 * heart-client.js (ES2017, no build step); in a browser <script> it is `self.heartWsAdapter`.
 */
;(function (root, factory) {
  if (typeof module === 'object' && module !== null && module.exports) module.exports = factory()
  else root.heartWsAdapter = factory()
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict'

  /** A refused handshake's body is read up to this many characters (the server's is a short JSON error). */
  const BODY_MAX = 2000

  function noop () {}

  /** Runs a wx-style callback later, as WeChat does. */
  function later (fn, res) {
    if (typeof fn === 'function') setTimeout(function () { fn(res) }, 0)
  }

  function withToken (url, header) {
    const auth = header && header.Authorization
    if (typeof auth !== 'string' || auth.indexOf('Bearer ') !== 0) return url
    return url + (url.indexOf('?') === -1 ? '?' : '&') + 'access_token=' + encodeURIComponent(auth.slice(7))
  }

  /** One socket, shaped as a mini program's SocketTask. */
  function socketTask (WebSocketCtor, opts, tokenInQuery) {
    const listeners = { open: [], message: [], close: [], error: [] }
    let ended = false
    function emit (event, res) {
      const list = listeners[event].slice()
      for (let i = 0; i < list.length; i++) list[i](res)
    }
    const ws = tokenInQuery
      ? new WebSocketCtor(withToken(opts.url, opts.header))
      : new WebSocketCtor(opts.url, { headers: opts.header || {} })
    ws.binaryType = 'arraybuffer'
    // Node's ws says why a handshake was refused (status and body); a browser never does.
    let refused = false
    if (typeof ws.on === 'function') {
      ws.on('unexpected-response', function (req, res) {
        refused = true
        let body = ''
        res.setEncoding('utf8')
        res.on('data', function (chunk) { if (body.length < BODY_MAX) body += chunk })
        res.on('end', function () {
          emit('error', { errMsg: 'handshake refused: HTTP ' + res.statusCode, statusCode: res.statusCode, body: body.slice(0, BODY_MAX) })
          ws.terminate()
        })
        res.on('error', function () { ws.terminate() })
      })
    }
    ws.addEventListener('open', function () { emit('open', { header: {} }) })
    ws.addEventListener('message', function (event) { emit('message', { data: event.data }) })
    ws.addEventListener('error', function (event) {
      // After a refusal, the error of the aborted handshake adds nothing.
      if (!refused) emit('error', { errMsg: (event && event.message) || 'WebSocket error' })
    })
    ws.addEventListener('close', function (event) {
      if (ended) return
      ended = true
      emit('close', { code: event.code, reason: event.reason })
    })
    later(opts.success, { errMsg: 'connectSocket:ok' })
    return {
      onOpen: function (fn) { listeners.open.push(fn) },
      onMessage: function (fn) { listeners.message.push(fn) },
      onClose: function (fn) { listeners.close.push(fn) },
      onError: function (fn) { listeners.error.push(fn) },
      send: function (o) {
        if (ws.readyState !== 1) {
          later(o.fail, { errMsg: 'sendSocketMessage:fail WebSocket is not connected' })
          return
        }
        ws.send(o.data)
        later(o.success, { errMsg: 'sendSocketMessage:ok' })
      },
      close: function (o) {
        o = o || {}
        try {
          ws.close(o.code === undefined ? 1000 : o.code, o.reason)
        } catch (err) {
          later(o.fail, { errMsg: 'closeSocket:fail ' + err.message })
          return
        }
        later(o.success, { errMsg: 'closeSocket:ok' })
      }
    }
  }

  /** `{ connectSocket }` over `WebSocketCtor`; `options.tokenInQuery` for browsers (see above). */
  function wxFromWebSocket (WebSocketCtor, options) {
    if (typeof WebSocketCtor !== 'function') throw new TypeError('wxFromWebSocket: pass a WebSocket class')
    const tokenInQuery = !!(options && options.tokenInQuery)
    return {
      connectSocket: function (opts) {
        try {
          return socketTask(WebSocketCtor, opts, tokenInQuery)
        } catch (err) {
          // A bad URL: WeChat reports it through fail and returns a task that never opens.
          later(opts.fail, { errMsg: 'connectSocket:fail ' + err.message })
          return { onOpen: noop, onMessage: noop, onClose: noop, onError: noop, send: noop, close: noop }
        }
      }
    }
  }

  return { wxFromWebSocket }
})
