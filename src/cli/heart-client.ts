/**
 * The one protocol client (client/heart-client.js, CommonJS, shipped uncompiled) for the CLI, with
 * a `wx` over the `ws` package (client/ws-adapter.js).
 */
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { WebSocket } from 'ws'
import type * as HeartClientModule from '../../client/heart-client.js'
import type * as WsAdapterModule from '../../client/ws-adapter.js'
import { projectRoot } from '../project-root.js'

const require = createRequire(import.meta.url)
const root = projectRoot()
const clientModule = require(join(root, 'client', 'heart-client.js')) as typeof HeartClientModule
const { wxFromWebSocket } = require(join(root, 'client', 'ws-adapter.js')) as typeof WsAdapterModule

export const { HeartClient } = clientModule
export type { DisconnectInfo, HeartClientError, PublishResult, Reading, SubscribeResult } from '../../client/heart-client.js'

/** Sockets of Node's `ws`, with the token in the Authorization header. */
export const wsWx = wxFromWebSocket(WebSocket)
