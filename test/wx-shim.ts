/**
 * A `wx` for Node tests, on top of the `ws` package, following the documented mini-program API:
 * `wx.connectSocket({ url, header, timeout, success, fail, complete })` returning a SocketTask
 * (`onOpen`, `onMessage({ data })`, `onClose({ code, reason })`, `onError({ errMsg })`,
 * `send({ data, success, fail, complete })`, `close({ code, reason, success, fail, complete })`),
 * and `onAppHide`/`onAppShow`/`offAppHide`/`offAppShow`. Callbacks run asynchronously, as in WeChat.
 *
 * Faults: `hide()`/`show()` play the app going to the background and back; `networkDown()` drops
 * every socket without a close frame (the client sees 1006) and fails new connections until
 * `networkUp()`; `stall()` silences open sockets without closing them (nothing in, nothing out:
 * only a dead-connection timer notices).
 *
 * With an adapter (`new WxShim({ wxFromWebSocket, browser })`), the sockets are those of
 * client/ws-adapter.js over `ws`, as the CLI's watch makes them, or over a WebSocket that takes
 * no options, as a browser's (the demo page): the same faults then run through the adapter.
 */
import { WebSocket, type ClientOptions, type RawData } from 'ws'
import type { Socket } from 'node:net'

interface Result { errMsg: string }
type Callback<T> = (res: T) => void

export interface CallbackOptions<T = Result> {
  success?: Callback<T>
  fail?: Callback<Result>
  complete?: Callback<Result>
}

export interface ConnectSocketOptions extends CallbackOptions {
  url: string
  header?: Record<string, string>
  protocols?: string[]
  timeout?: number
}

export interface SendOptions extends CallbackOptions {
  data: string | ArrayBuffer
}

export interface CloseOptions extends CallbackOptions {
  code?: number
  reason?: string
}

/** A SocketTask as client/ws-adapter.js makes it. */
interface AdapterTask {
  onOpen (listener: Callback<{ header: Record<string, string> }>): void
  onMessage (listener: Callback<{ data: string | ArrayBuffer }>): void
  onClose (listener: Callback<{ code: number, reason: string }>): void
  onError (listener: Callback<Result>): void
  send (opts: SendOptions): void
  close (opts: CloseOptions): void
}

export interface Adapter {
  /** client/ws-adapter.js's export. */
  wxFromWebSocket: (WebSocketCtor: new (url: string, options?: ClientOptions) => WebSocket, options?: { tokenInQuery?: boolean }) => { connectSocket (opts: ConnectSocketOptions): AdapterTask }
  /** A browser's WebSocket: no handshake headers, so the token goes in the URL. */
  browser: boolean
}

/** The adapter's `wx`, over a WebSocket class that records the sockets it makes (for the faults). */
function adapterWx (adapter: Adapter, created: WebSocket[]): { connectSocket (opts: ConnectSocketOptions): AdapterTask } {
  const browser = adapter.browser
  class Recorded extends WebSocket {
    constructor (url: string, options?: ClientOptions) {
      if (browser && options !== undefined) throw new TypeError('a browser WebSocket takes no options: the token must go in the URL')
      super(url, options)
      created.push(this)
    }
  }
  return adapter.wxFromWebSocket(Recorded, { tokenInQuery: browser })
}

/** Runs the callbacks of a wx API call the way WeChat does: later, then `complete`. */
function settle<T extends Result> (opts: CallbackOptions<T> | undefined, ok: boolean, res: T): void {
  setImmediate(() => {
    if (ok) opts?.success?.(res)
    else opts?.fail?.(res)
    opts?.complete?.(res)
  })
}

/** Codes a mini program (like a browser) may close with. */
function closeCodeAllowed (code: number): boolean {
  return code === 1000 || (code >= 3000 && code <= 4999)
}

export class ShimSocketTask {
  private readonly listeners = {
    open: [] as Array<Callback<{ header: Record<string, string> }>>,
    message: [] as Array<Callback<{ data: string | ArrayBuffer }>>,
    close: [] as Array<Callback<{ code: number, reason: string }>>,
    error: [] as Array<Callback<Result>>
  }

  /** How it ended, as onClose reported it; null while it lasts. */
  closed: { code: number, reason: string } | null = null
  /** What the client asked close() for, if it did, and when. */
  closedByClient: { code: number, reason: string, at: number } | null = null
  /** When the last frame was handed to the client. */
  receivedAt = 0
  /** Every frame the client sent (or tried to), in order. */
  readonly sent: string[] = []
  stalled = false
  readonly ws: WebSocket | null
  /** The adapter's task this one records, when the shim has an adapter. */
  private readonly inner: AdapterTask | null = null

  constructor (readonly url: string, readonly header: Record<string, string>, offline: boolean, timeout?: number, viaAdapter?: { wx: ReturnType<typeof adapterWx>, created: WebSocket[] }) {
    if (offline) {
      this.ws = null
      setImmediate(() => {
        this.emit('error', { errMsg: 'connectSocket:fail network is down' })
        this.ended(1006, 'abnormal closure')
      })
      return
    }
    if (viaAdapter !== undefined) {
      const inner = viaAdapter.wx.connectSocket({ url, header })
      this.inner = inner
      this.ws = viaAdapter.created.at(-1) ?? null
      inner.onOpen((res) => this.emit('open', res))
      inner.onMessage((res) => {
        if (this.stalled) return
        this.receivedAt = Date.now()
        this.emit('message', res)
      })
      inner.onError((res) => this.emit('error', res))
      inner.onClose((res) => this.ended(res.code, res.reason))
      return
    }
    const ws = new WebSocket(url, { headers: header, handshakeTimeout: timeout ?? 60000 })
    this.ws = ws
    ws.on('open', () => this.emit('open', { header: {} }))
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (this.stalled) return
      this.receivedAt = Date.now()
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
      this.emit('message', { data: isBinary ? buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) : buf.toString() })
    })
    // ws follows every error (a refused upgrade included) with 'close'.
    ws.on('error', (err) => this.emit('error', { errMsg: `WebSocket error: ${err.message}` }))
    ws.on('close', (code, reason) => this.ended(code, String(reason)))
  }

  private emit<K extends keyof ShimSocketTask['listeners']> (event: K, res: Parameters<ShimSocketTask['listeners'][K][number]>[0]): void {
    for (const listener of this.listeners[event]) (listener as (r: typeof res) => void)(res)
  }

  private ended (code: number, reason: string): void {
    if (this.closed !== null) return
    this.closed = { code, reason }
    this.emit('close', this.closed)
  }

  onOpen (listener: Callback<{ header: Record<string, string> }>): void { this.listeners.open.push(listener) }
  onMessage (listener: Callback<{ data: string | ArrayBuffer }>): void { this.listeners.message.push(listener) }
  onClose (listener: Callback<{ code: number, reason: string }>): void { this.listeners.close.push(listener) }
  onError (listener: Callback<Result>): void { this.listeners.error.push(listener) }

  get open (): boolean {
    return this.ws?.readyState === WebSocket.OPEN
  }

  send (opts: SendOptions): void {
    if (typeof opts.data === 'string') this.sent.push(opts.data)
    const ws = this.ws
    if (ws === null || ws.readyState !== WebSocket.OPEN) {
      settle(opts, false, { errMsg: 'sendSocketMessage:fail WebSocket is not connected' })
      return
    }
    if (this.stalled) {
      // Into the void, as on a network that went away silently: the send itself "succeeds".
      settle(opts, true, { errMsg: 'sendSocketMessage:ok' })
      return
    }
    if (this.inner !== null) {
      this.inner.send(opts)
      return
    }
    ws.send(opts.data, (err) => settle(opts, err == null, { errMsg: err == null ? 'sendSocketMessage:ok' : `sendSocketMessage:fail ${err.message}` }))
  }

  close (opts: CloseOptions = {}): void {
    const code = opts.code ?? 1000
    if (!closeCodeAllowed(code)) {
      settle(opts, false, { errMsg: `closeSocket:fail The code must be either 1000, or between 3000 and 4999. ${code} is neither.` })
      return
    }
    if (opts.reason !== undefined && Buffer.byteLength(opts.reason) > 123) {
      settle(opts, false, { errMsg: 'closeSocket:fail The message must not be greater than 123 bytes.' })
      return
    }
    this.closedByClient ??= { code, reason: opts.reason ?? '', at: Date.now() }
    const ws = this.ws
    // A stalled network would never carry the close handshake: give the socket up locally.
    if (ws !== null && this.stalled) ws.terminate()
    else if (this.inner !== null) this.inner.close({ code, reason: opts.reason })
    else if (ws !== null && ws.readyState === WebSocket.CONNECTING) ws.terminate()
    else ws?.close(code, opts.reason)
    settle(opts, true, { errMsg: 'closeSocket:ok' })
  }

  /** Destroys the TCP connection without a close frame: both ends see it end abnormally (1006). */
  drop (): void {
    (this.ws as unknown as { _socket?: Socket } | null)?._socket?.destroy()
  }

  /** Stops all traffic both ways without closing anything. */
  stall (): void {
    this.stalled = true
    this.ws?.pause()
  }
}

export class WxShim {
  readonly tasks: ShimSocketTask[] = []
  private readonly hideListeners = new Set<() => void>()
  private readonly showListeners = new Set<() => void>()
  private offline = false
  private readonly viaAdapter: { wx: ReturnType<typeof adapterWx>, created: WebSocket[] } | undefined

  constructor (adapter?: Adapter) {
    if (adapter === undefined) return
    const created: WebSocket[] = []
    this.viaAdapter = { wx: adapterWx(adapter, created), created }
  }

  connectSocket (opts: ConnectSocketOptions): ShimSocketTask {
    if (!/^wss?:\/\//.test(opts.url)) {
      settle(opts, false, { errMsg: `connectSocket:fail invalid url "${opts.url}"` })
      // WeChat still returns a task; it never opens.
      return new ShimSocketTask(opts.url, opts.header ?? {}, true)
    }
    const task = new ShimSocketTask(opts.url, opts.header ?? {}, this.offline, opts.timeout, this.viaAdapter)
    this.tasks.push(task)
    settle(opts, true, { errMsg: 'connectSocket:ok' })
    return task
  }

  onAppHide (listener: () => void): void { this.hideListeners.add(listener) }
  offAppHide (listener: () => void): void { this.hideListeners.delete(listener) }
  onAppShow (listener: () => void): void { this.showListeners.add(listener) }
  offAppShow (listener: () => void): void { this.showListeners.delete(listener) }

  get appListeners (): { hide: number, show: number } {
    return { hide: this.hideListeners.size, show: this.showListeners.size }
  }

  /** The user switched away from the mini program. */
  hide (): void {
    for (const listener of [...this.hideListeners]) listener()
  }

  /** The user came back. */
  show (): void {
    for (const listener of [...this.showListeners]) listener()
  }

  /** The last task created (the client's current socket, usually). */
  get last (): ShimSocketTask {
    const task = this.tasks.at(-1)
    if (task === undefined) throw new Error('no socket was opened')
    return task
  }

  networkDown (): void {
    this.offline = true
    for (const task of this.tasks) task.drop()
  }

  networkUp (): void {
    this.offline = false
  }

  stall (): void {
    for (const task of this.tasks) if (task.open) task.stall()
  }

  /** Ends every socket at once (test teardown). */
  destroy (): void {
    for (const task of this.tasks) task.ws?.terminate()
  }
}
