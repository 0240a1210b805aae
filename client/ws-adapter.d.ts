/** Types of ws-adapter.js: a `wx` for heart-client.js made of a WebSocket class (usage: README.md here). */
import type { WxLike } from './heart-client.js'

export interface WxFromWebSocketOptions {
  /** Send the token as `?access_token=` (browsers: they cannot set handshake headers). Default false: an `Authorization` header, as Node's `ws` sends it. */
  tokenInQuery?: boolean
}

/** `WebSocketCtor`: the browser's `WebSocket`, or the `WebSocket` class of Node's `ws` package. */
export declare function wxFromWebSocket (WebSocketCtor: abstract new (...args: any[]) => unknown, options?: WxFromWebSocketOptions): WxLike
