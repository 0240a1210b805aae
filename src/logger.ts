import type { FastifyServerOptions } from 'fastify'

/** Whether a query parameter name is `access_token` as the query parser reads it (it decodes names: `access%5Ftoken` counts). */
function isTokenParam (name: string): boolean {
  try {
    return decodeURIComponent(name).toLowerCase() === 'access_token'
  } catch {
    return /access_token/i.test(name)
  }
}

/** A URL as it may be logged: `?access_token=` is a credential. */
export function redactUrl (url: string): string {
  const q = url.indexOf('?')
  if (q === -1) return url
  const params = url.slice(q + 1).split('&').map((param) => {
    const eq = param.indexOf('=')
    return eq !== -1 && isTokenParam(param.slice(0, eq)) ? `${param.slice(0, eq)}=[redacted]` : param
  })
  return `${url.slice(0, q + 1)}${params.join('&')}`
}

/** Redis repeats the first arguments of a command it does not know in its error message. */
const ECHOED_ARGS = /(with args beginning with:).*/g
/** Deep enough for a cause of a cause, or a cluster's `lastNodeError`; a cycle stops here too. */
const MAX_ERROR_DEPTH = 4

/**
 * An error as it may be logged, at any level. ioredis attaches the failed command to its errors
 * (`command: { name, args }`: an AUTH password, a script's readings) and Redis echoes an unknown
 * command's arguments in its message: the command's name stays, its arguments go. Causes and
 * errors held in other fields are cleaned the same way. The original error is left as it is.
 */
export function loggableError (value: unknown, depth = 0): unknown {
  if (!(value instanceof Error) || depth > MAX_ERROR_DEPTH) return value
  const copy = Object.create(Object.getPrototypeOf(value) as object) as Record<PropertyKey, unknown>
  const source = value as unknown as Record<PropertyKey, unknown>
  for (const key of Reflect.ownKeys(value)) {
    let field = source[key]
    if (typeof field === 'string') field = field.replace(ECHOED_ARGS, '$1 [redacted]')
    else if (key === 'command' && typeof field === 'object' && field !== null) field = { name: (field as { name?: unknown }).name }
    else if (Array.isArray(field)) field = field.map((item) => loggableError(item, depth + 1))
    else field = loggableError(field, depth + 1)
    const { enumerable } = Object.getOwnPropertyDescriptor(value, key) as PropertyDescriptor
    Object.defineProperty(copy, key, { value: field, enumerable, writable: true, configurable: true })
  }
  return copy
}

interface LoggedRequest {
  method: string
  url: string
  headers: Record<string, string | string[] | undefined>
  ip?: string
  socket?: { remotePort?: number }
}

/**
 * pino options for the service. Requests are logged without query tokens; headers are never
 * logged (Authorization), nor are bodies (WeChat codes, readings); errors without the arguments
 * of a failed Redis command.
 */
export function loggerOptions (level: string): NonNullable<FastifyServerOptions['logger']> {
  return {
    level,
    // Before pino sees the error: its serializer copies every enumerable field (ioredis's
    // `command`), and a line without a message of its own takes the error's.
    hooks: {
      logMethod (args, method) {
        const [first] = args as unknown[]
        if (first instanceof Error) args[0] = loggableError(first)
        else if (typeof first === 'object' && first !== null && 'err' in first) args[0] = { ...first, err: loggableError(first.err) }
        method.apply(this, args)
      }
    },
    serializers: {
      req (req: LoggedRequest) {
        return { method: req.method, url: redactUrl(req.url), host: req.headers?.host as string | undefined, remoteAddress: req.ip, remotePort: req.socket?.remotePort }
      }
    }
  }
}
