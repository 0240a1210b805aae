import type { FastifyServerOptions } from 'fastify'

const TOKEN_IN_QUERY = /([?&]access_token=)[^&]*/gi

/** A URL as it may be logged: `?access_token=` is a credential. */
export function redactUrl (url: string): string {
  return url.replace(TOKEN_IN_QUERY, '$1[redacted]')
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
 * logged (Authorization), nor are bodies (WeChat codes, readings).
 */
export function loggerOptions (level: string): NonNullable<FastifyServerOptions['logger']> {
  return {
    level,
    serializers: {
      req (req: LoggedRequest) {
        return { method: req.method, url: redactUrl(req.url), host: req.headers?.host as string | undefined, remoteAddress: req.ip, remotePort: req.socket?.remotePort }
      }
    }
  }
}
