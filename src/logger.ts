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
