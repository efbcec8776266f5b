// Package wechat is a client for WeChat's logistics open_msg API (物流查询组件 and
// 物流消息组件) with access-token management for one process or many.
// The waybill Handler calls WeChat through it, and so can any Go program
// that calls the open_msg API alone: it depends on no other public waybill package
// and on no Kafka or Redis client (wechat/redisstore shares tokens on Redis).
//
// # Calls
//
// A [Client] serves any number of appids: every method takes the appid whose
// access token authorizes the call. Each method POSTs a JSON body with
// Content-Type application/json, raw UTF-8 (no \u escapes, no HTML escaping of
// <>&), to BaseURL + "/cgi-bin/express/delivery/open_msg/<name>". Responses are
// decoded tolerantly: unknown fields are ignored.
//
// # Errors
//
// A non-zero errcode, or an HTTP status other than 200, comes back as an
// [*Error] carrying the endpoint, errcode, errmsg and a [Class] that tells the
// caller what to do. [ClassOf] classifies any error the client returns: local
// failures (network, timeouts, undecodable answers) are [ClassTransient], never
// permanent. The table behind [DefaultClassify] can be replaced or extended
// through Config.Classify. An error also satisfies errors.Is(err,
// [ErrNotSent]) when WeChat certainly never received the call (no connection
// was made for it, or its token could not be had), whatever its class.
//
// # Tokens
//
// On errcode 40001, 40014 or 42001 the client asks its [TokenSource] to
// refresh the rejected token (which fetches only if nobody has refreshed it
// already) and retries the call exactly once. It never loops.
//
// Token sources:
//   - [StableTokenSource]: cgi-bin/stable_token, the default choice. Processes
//     may fetch independently; a [TokenStore] still saves calls.
//   - [AccessTokenSource]: cgi-bin/token. Every fetch invalidates the previous
//     token after a 5-minute overlap, so every process sharing an appid must
//     share one [TokenStore] (package redisstore for many processes).
//   - [ComponentTokenSource]: a third-party platform's authorizer_access_token
//     for many merchant appids, with the rotating authorizer_refresh_token
//     saved back to the store.
//   - [StaticTokenSource]: tokens obtained elsewhere.
//
// All fetching sources share one algorithm: a token is served from the store
// until shortly before it expires; concurrent callers in one process share a
// single in-flight fetch; across processes a lock in the store lets one
// process fetch while the others poll the store; a refresh fetches only if the
// stored token is still the one WeChat rejected.
//
// Secrets and tokens never appear in errors, logs, or the String/GoString
// output of this package's types.
package wechat
