/// <reference path="./wechat-typings.d.ts" />
/**
 * A `wx` for Node tests, on top of the `ws` package, typed against the official mini-program
 * typings (miniprogram-api-typings: `WechatMiniprogram.SocketTask`, `ConnectSocketOption`, …) and
 * behaving as WeChat's documentation says: `connectSocket` returns a SocketTask, callbacks run
 * asynchronously, then `complete`; at most 5 sockets at once (the sixth `connectSocket` fails with
 * `exceed max task count`, with no onError); `SocketTask.close` fails on a code other than 1000 or
 * 3000–4999 and on a reason longer than 123 UTF-8 bytes (the socket then stays open, holding its
 * place); a refused handshake is only `onError` + `onClose(1006)`, with no HTTP status;
 * `SocketTask.send` on a socket that is gone calls `fail`. Also `onAppHide`/`onAppShow`/
 * `offAppHide`/`offAppShow`.
 *
 * Faults: `hide()`/`show()` play the app going to the background and back; `networkDown()` drops
 * every socket without a close frame (the client sees 1006) and fails new connections until
 * `networkUp()`; `stall()` silences open sockets without closing them (nothing in, nothing out:
 * only a dead-connection timer notices); a task's `sever()` is a connection that died without
 * WeChat reporting it (no onClose; only `send` fails), and `reportError(errMsg)` an onError on an
 * open socket.
 *
 * With an adapter (`new WxShim({ wxFromWebSocket, browser })`), the sockets are those of
 * client/ws-adapter.js over `ws`, as the CLI's watch makes them, or over a WebSocket that takes
 * no options, as a browser's (the demo page): the same faults then run through the adapter.
 */
import { WebSocket, type ClientOptions, type RawData } from 'ws'
import type { Socket } from 'node:net'

type Result = WechatMiniprogram.GeneralCallbackResult
type Callback<T> = (res: T) => void

/** Sockets a mini program may have open at once. */
export const MAX_SOCKETS = 5

interface CallbackOptions {
  success?: (res: Result) => void
  fail?: (res: Result) => void
  complete?: (res: Result) => void
}

/** A SocketTask as client/ws-adapter.js makes it. */
interface AdapterTask {
  onOpen (listener: Callback<{ header: Record<string, string> }>): void
  onMessage (listener: Callback<{ data: string | ArrayBuffer }>): void
  onClose (listener: Callback<{ code: number, reason: string }>): void
  onError (listener: Callback<Result>): void
  send (opts: WechatMiniprogram.SocketTaskSendOption): void
  close (opts: WechatMiniprogram.SocketTaskCloseOption): void
}

export interface Adapter {
  /** client/ws-adapter.js's export. */
  wxFromWebSocket: (WebSocketCtor: new (url: string, options?: ClientOptions) => WebSocket, options?: { tokenInQuery?: boolean }) => { connectSocket (opts: WechatMiniprogram.ConnectSocketOption): AdapterTask }
  /** A browser's WebSocket: no handshake headers, so the token goes in the URL. */
  browser: boolean
}

/** The adapter's `wx`, over a WebSocket class that records the sockets it makes (for the faults). */
function adapterWx (adapter: Adapter, created: WebSocket[]): { connectSocket (opts: WechatMiniprogram.ConnectSocketOption): AdapterTask } {
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
function settle (opts: CallbackOptions | undefined, ok: boolean, res: Result): void {
  setImmediate(() => {
    if (ok) opts?.success?.(res)
    else opts?.fail?.(res)
    opts?.complete?.(res)
  })
}

const NO_PROFILE: WechatMiniprogram.SocketProfile = { connectEnd: 0, connectStart: 0, cost: 0, domainLookUpEnd: 0, domainLookUpStart: 0, fetchStart: 0, handshakeCost: 0, rtt: 0 }

/** Codes a mini program (like a browser) may close with. */
function closeCodeAllowed (code: number): boolean {
  return code === 1000 || (code >= 3000 && code <= 4999)
}

export class ShimSocketTask implements WechatMiniprogram.SocketTask {
  private readonly listeners = {
    open: [] as WechatMiniprogram.OnOpenCallback[],
    message: [] as WechatMiniprogram.SocketTaskOnMessageCallback[],
    close: [] as WechatMiniprogram.SocketTaskOnCloseCallback[],
    error: [] as WechatMiniprogram.UDPSocketOnErrorCallback[]
  }

  /** How it ended, as onClose reported it; null while it lasts. */
  closed: { code: number, reason: string } | null = null
  /** What the client asked close() for, if it did (and close succeeded), and when. */
  closedByClient: { code: number, reason: string, at: number } | null = null
  /** Every close() that failed, with WeChat's errMsg. */
  readonly closeFailures: string[] = []
  /** When connectSocket made it. */
  readonly createdAt = Date.now()
  /** When the last frame was handed to the client. */
  receivedAt = 0
  /** Every frame the client sent (or tried to), in order. */
  readonly sent: string[] = []
  stalled = false
  /** Dead without WeChat saying so: nothing arrives, sends fail, no onClose. */
  severed = false
  readonly ws: WebSocket | null
  /** The adapter's task this one records, when the shim has an adapter. */
  private readonly inner: AdapterTask | null = null
  /** A task whose connectSocket failed: it never does anything, and holds no place. */
  readonly inert: boolean

  constructor (readonly url: string, readonly header: Record<string, string>, mode: 'live' | 'offline' | 'inert', timeout?: number, viaAdapter?: { wx: ReturnType<typeof adapterWx>, created: WebSocket[] }) {
    this.inert = mode === 'inert'
    if (mode !== 'live') {
      this.ws = null
      if (mode === 'offline') {
        setImmediate(() => {
          this.emit('error', { errMsg: 'connectSocket:fail network is down' })
          this.ended(1006, 'abnormal closure')
        })
      }
      return
    }
    if (viaAdapter !== undefined) {
      const inner = viaAdapter.wx.connectSocket({ url, header })
      this.inner = inner
      this.ws = viaAdapter.created.at(-1) ?? null
      inner.onOpen((res) => this.emit('open', { header: res.header, profile: NO_PROFILE }))
      inner.onMessage((res) => {
        if (this.stalled || this.severed) return
        this.receivedAt = Date.now()
        this.emit('message', res)
      })
      inner.onError((res) => this.emit('error', res))
      inner.onClose((res) => this.ended(res.code, res.reason))
      return
    }
    const ws = new WebSocket(url, { headers: header, handshakeTimeout: timeout ?? 60000 })
    this.ws = ws
    ws.on('open', () => this.emit('open', { header: {}, profile: NO_PROFILE }))
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (this.stalled || this.severed) return
      this.receivedAt = Date.now()
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
      this.emit('message', { data: isBinary ? buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) : buf.toString() })
    })
    // ws follows every error (a refused upgrade included) with 'close'. WeChat's errMsg of a
    // refused handshake carries no HTTP status, so neither does this one.
    ws.on('error', () => this.emit('error', { errMsg: ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED ? 'WebSocket connection failed' : 'WebSocket error' }))
    ws.on('close', (code, reason) => this.ended(code, String(reason)))
  }

  private emit<K extends keyof ShimSocketTask['listeners']> (event: K, res: Parameters<ShimSocketTask['listeners'][K][number]>[0]): void {
    for (const listener of this.listeners[event]) (listener as (r: typeof res) => void)(res)
  }

  private ended (code: number, reason: string): void {
    if (this.closed !== null) return
    this.closed = { code, reason }
    if (this.severed) return
    this.emit('close', this.closed)
  }

  onOpen (listener: WechatMiniprogram.OnOpenCallback): void { this.listeners.open.push(listener) }
  onMessage (listener: WechatMiniprogram.SocketTaskOnMessageCallback): void { this.listeners.message.push(listener) }
  onClose (listener: WechatMiniprogram.SocketTaskOnCloseCallback): void { this.listeners.close.push(listener) }
  onError (listener: WechatMiniprogram.UDPSocketOnErrorCallback): void { this.listeners.error.push(listener) }

  get open (): boolean {
    return this.ws?.readyState === WebSocket.OPEN
  }

  /** Whether it takes one of the mini program's 5 places: until it has ended. */
  get holdsPlace (): boolean {
    return !this.inert && this.closed === null
  }

  send (opts: WechatMiniprogram.SocketTaskSendOption): void {
    if (typeof opts.data === 'string') this.sent.push(opts.data)
    const ws = this.ws
    if (ws === null || ws.readyState !== WebSocket.OPEN || this.severed) {
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

  close (opts: WechatMiniprogram.SocketTaskCloseOption): void {
    const code = opts.code ?? 1000
    let failure: string | null = null
    if (!closeCodeAllowed(code)) failure = `closeSocket:fail The code must be either 1000, or between 3000 and 4999. ${code} is neither.`
    else if (opts.reason !== undefined && Buffer.byteLength(opts.reason) > 123) failure = 'closeSocket:fail The message must not be greater than 123 bytes.'
    if (failure !== null) {
      this.closeFailures.push(failure)
      settle(opts, false, { errMsg: failure })
      return
    }
    this.closedByClient ??= { code, reason: opts.reason ?? '', at: Date.now() }
    const ws = this.ws
    // A stalled or severed network would never carry the close handshake: give the socket up locally.
    if (ws !== null && (this.stalled || this.severed)) ws.terminate()
    else if (this.inner !== null) this.inner.close({ code, reason: opts.reason })
    else if (ws !== null && ws.readyState === WebSocket.CONNECTING) ws.terminate()
    else ws?.close(code, opts.reason)
    if (ws === null) this.ended(code, opts.reason ?? '')
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

  /** The connection died and WeChat never says so: no onClose, no onError; sends fail. */
  sever (): void {
    this.severed = true
    this.ws?.pause()
  }

  /** WeChat reports an error on the open socket, which stays open. */
  reportError (errMsg: string): void {
    this.emit('error', { errMsg })
  }
}

export class WxShim implements Pick<WechatMiniprogram.Wx, 'connectSocket' | 'onAppHide' | 'offAppHide' | 'onAppShow' | 'offAppShow'> {
  readonly tasks: ShimSocketTask[] = []
  /** connectSocket calls refused with `exceed max task count`. */
  refusedConnects = 0
  private readonly hideListeners = new Set<WechatMiniprogram.OnAppHideCallback>()
  private readonly showListeners = new Set<WechatMiniprogram.OnAppShowCallback>()
  private offline = false
  private readonly viaAdapter: { wx: ReturnType<typeof adapterWx>, created: WebSocket[] } | undefined

  constructor (adapter?: Adapter) {
    if (adapter === undefined) return
    const created: WebSocket[] = []
    this.viaAdapter = { wx: adapterWx(adapter, created), created }
  }

  connectSocket (opts: WechatMiniprogram.ConnectSocketOption): WechatMiniprogram.SocketTask {
    const header = (opts.header ?? {}) as Record<string, string>
    if (!/^wss?:\/\//.test(opts.url)) {
      settle(opts, false, { errMsg: `connectSocket:fail invalid url "${opts.url}"` })
      // WeChat still returns a task; it never opens.
      return new ShimSocketTask(opts.url, header, 'inert')
    }
    if (this.places >= MAX_SOCKETS) {
      this.refusedConnects++
      settle(opts, false, { errMsg: 'connectSocket:fail exceed max task count' })
      return new ShimSocketTask(opts.url, header, 'inert')
    }
    const task = new ShimSocketTask(opts.url, header, this.offline ? 'offline' : 'live', opts.timeout, this.viaAdapter)
    this.tasks.push(task)
    settle(opts, true, { errMsg: 'connectSocket:ok' })
    return task
  }

  /** Sockets holding one of the 5 places. */
  get places (): number {
    return this.tasks.filter((task) => task.holdsPlace).length
  }

  onAppHide (listener: WechatMiniprogram.OnAppHideCallback): void { this.hideListeners.add(listener) }
  offAppHide (listener?: WechatMiniprogram.OffAppHideCallback): void {
    if (listener === undefined) this.hideListeners.clear()
    else this.hideListeners.delete(listener as unknown as WechatMiniprogram.OnAppHideCallback)
  }

  onAppShow (listener: WechatMiniprogram.OnAppShowCallback): void { this.showListeners.add(listener) }
  offAppShow (listener?: WechatMiniprogram.OffAppShowCallback): void {
    if (listener === undefined) this.showListeners.clear()
    else this.showListeners.delete(listener as unknown as WechatMiniprogram.OnAppShowCallback)
  }

  get appListeners (): { hide: number, show: number } {
    return { hide: this.hideListeners.size, show: this.showListeners.size }
  }

  /** The user switched away from the mini program. */
  hide (): void {
    for (const listener of [...this.hideListeners]) listener({ reason: 0 })
  }

  /** The user came back. */
  show (): void {
    // The client reads nothing of the launch options: the fields the test knows are enough.
    const options = { path: 'pages/index/index', query: {}, scene: 1001 } as unknown as WechatMiniprogram.LaunchOptionsApp
    for (const listener of [...this.showListeners]) listener(options)
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
