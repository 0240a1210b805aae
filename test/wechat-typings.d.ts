/**
 * The API part of the official mini-program typings (miniprogram-api-typings), for the test shims
 * of `wx`. Their index.d.ts is not used: it also declares a mini program's globals (`console`,
 * `require`, `setTimeout`, `wx`), which clash with Node's. What the API file takes from it is here.
 */
/// <reference path="../node_modules/miniprogram-api-typings/types/wx/lib.wx.api.d.ts" />

declare namespace WechatMiniprogram {
  type IAnyObject = Record<string, any>
  interface AsyncMethodOptionLike {
    success?: (...args: any[]) => void
  }
  type PromisifySuccessResult<P, T extends AsyncMethodOptionLike> = P extends { success: any }
    ? void
    : P extends { fail: any }
      ? void
      : P extends { complete: any }
        ? void
        : Promise<Parameters<Exclude<T['success'], undefined>>[0]>
}
