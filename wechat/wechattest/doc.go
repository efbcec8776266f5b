// Package wechattest is a WeChat API sandbox for the logistics open_msg
// family: a real HTTP server on a loopback port that answers as
// api.weixin.qq.com does, so that a client is tested against the wire
// protocol rather than against mocks. waybill's own tests import it, and so
// can users who test their pipelines without WeChat. It mirrors
// net/http/httptest:
//
//	srv := wechattest.NewServer(wechattest.Config{})
//	defer srv.Close()
//	srv.AddApp("wx0123456789abcdef", "secret")
//	// point the client's base URL at srv.URL instead of https://api.weixin.qq.com
//
// It records every call (Calls, CallsTo), and plays injected faults (Inject):
// latency, HTTP 5xx, in-band errcodes such as -1 or 45009, and dropped
// connections, always or at a seeded rate, a given number of times.
//
// # Pointing your own service at it
//
// The command wechattest/cmd/wechat-sandbox serves the same sandbox on a
// loopback address and prints its URL:
//
//	go run ./wechat/wechattest/cmd/wechat-sandbox -addr 127.0.0.1:8399 -app wx0123456789abcdef:secret
//
// Configure the service's WeChat base URL as http://127.0.0.1:8399; the paths
// are WeChat's own (/cgi-bin/stable_token, /cgi-bin/express/delivery/open_msg/
// trace_waybill, ...). Without -app it accepts any appid with any secret.
//
// # Endpoints
//
//	POST /cgi-bin/stable_token                     access_token; same token while valid, force_refresh rotates at once
//	GET  /cgi-bin/token                            access_token; each call rotates, the previous lives Config.TokenOverlap
//	POST /cgi-bin/component/api_component_token    component_access_token of a platform (AddComponent)
//	POST /cgi-bin/component/api_authorizer_token   authorizer_access_token; rotates authorizer_refresh_token (AddAuthorizer)
//	POST /cgi-bin/openapi/quota/get                daily_limit, used, remain of an open_msg cgi_path
//	POST /cgi-bin/express/delivery/open_msg/trace_waybill, query_trace, update_waybill_goods,
//	     get_delivery_list, follow_waybill, query_follow_trace, update_follow_waybill_goods,
//	     open_openmsg, open_query_plugin
//
// # Faithful
//
//   - Answers: HTTP 200 with {"errcode":N,"errmsg":"..."} for every in-band
//     error, success bodies shaped as WeChat's, Content-Type
//     "application/json; encoding=utf-8", raw UTF-8 with <>& unescaped.
//   - Token rules: 41001 missing, 40014 malformed, 40001 unknown or
//     superseded, 42001 expired; stable_token vs cgi-bin/token rotation as
//     documented; a rotated authorizer_refresh_token works 5 more minutes,
//     then 61023; a merchant without permission set 45 gets 61007.
//   - A POST without a JSON Content-Type is read as an empty body, so
//     trace_waybill answers WeChat's misleading 40003 "invalid openid".
//     Missing openid: 40003; other missing or malformed fields: 47001.
//   - trace_waybill answers a stable waybill_token per (appid, waybill_id);
//     repeating it does not change the goods, update_waybill_goods does.
//     Tokens of the query plugin and of the message component are not
//     interchangeable (9300507), nor are tokens across appids.
//   - Quotas: per appid and path a day (45009), per appid and openid a day
//     (45009; 100 for the query plugin, 50 for the message component), per
//     appid and path a minute (45011); days start at a configurable time
//     (default 00:00 UTC+8). A call counts once its token and openid pass;
//     a call refused for quota does not count.
//
// # Simplified
//
//   - Any goods_img_url, phone, trans_id and delivery_id are accepted; the
//     carrier list is a dozen well-known carriers, not WeChat's 1,400.
//   - A waybill's status changes only as a test scripts it (SetTrace), one
//     step per query; 931023 only for waybills marked with MarkUnknown.
//   - Not modelled: stable_token's force_refresh limits (20 a day, 30 s
//     apart), token-endpoint quotas, IP allow lists (40164/61004 can be
//     injected as faults), the message component's 100 active waybills per
//     user, WeChat Pay preconditions, service notifications.
//   - errmsg texts carry no " rid: ..." suffix.
//   - State lives in memory and ends with the server.
//
// All methods of Server are safe for concurrent use.
package wechattest
