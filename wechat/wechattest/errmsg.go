package wechattest

// errmsgs holds the errmsg texts the sandbox answers with. They follow what
// WeChat's servers send (without the trailing " rid: ..." request id), so that
// logs and error messages in a client under test read as they would in
// production. Callers must branch on errcode, never on errmsg.
var errmsgs = map[int]string{
	-1:      "system error",
	0:       "ok",
	40001:   "invalid credential, access_token is invalid or not latest",
	40002:   "invalid grant_type",
	40003:   "invalid openid",
	40013:   "invalid appid",
	40014:   "invalid access_token",
	40125:   "invalid appsecret",
	40164:   "invalid ip, not in whitelist",
	41001:   "access_token missing",
	41002:   "appid missing",
	41004:   "appsecret missing",
	42001:   "access_token expired",
	45009:   "reach max api daily quota limit",
	45011:   "api minute-quota reach limit  mustslower  retry next minute",
	47001:   "data format error",
	48001:   "api unauthorized",
	48004:   "api forbidden for irregularities",
	61004:   "access clientip is not registered",
	61006:   "component ticket is invalid",
	61007:   "api is unauthorized to component",
	61023:   "refresh_token is invalid",
	76021:   "cgi_path not found, please check",
	931023:  "waybill not found or no logistics info yet",
	9300507: "invalid waybill_token",
}

// Errmsg returns the errmsg text the sandbox uses for errcode, or
// "unknown error" for a code it has no text for. Fault injection uses it when
// Fault.Errmsg is empty.
func Errmsg(errcode int) string {
	if m, ok := errmsgs[errcode]; ok {
		return m
	}
	return "unknown error"
}
