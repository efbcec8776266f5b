package wechattest_test

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func TestStableTokenIsStableWhileValid(t *testing.T) {
	clk := newClock(t0)
	srv := newServer(t, wechattest.Config{Now: clk.Now})
	a := mustOKToken(t, stableToken(t, srv, appID, appSecret, false))
	if got := a["expires_in"].(float64); got != 7200 {
		t.Fatalf("expires_in %v, want 7200", got)
	}
	clk.Advance(time.Hour)
	b := mustOKToken(t, stableToken(t, srv, appID, appSecret, false))
	if a.str("access_token") != b.str("access_token") {
		t.Fatal("stable_token gave a new token while the old one was valid")
	}
	if got := b["expires_in"].(float64); got != 3600 {
		t.Fatalf("expires_in %v one hour later, want 3600", got)
	}
	// In the last 5 minutes a fresh token comes; the old one lives to its expiry.
	clk.Advance(time.Hour - 4*time.Minute)
	c := mustOKToken(t, stableToken(t, srv, appID, appSecret, false))
	if c.str("access_token") == a.str("access_token") {
		t.Fatal("stable_token kept handing out a token 4 minutes from expiry")
	}
	mustOK(t, call(t, srv, a.str("access_token"), "get_delivery_list", `{}`))
	clk.Advance(4 * time.Minute)
	wantErr(t, call(t, srv, a.str("access_token"), "get_delivery_list", `{}`), 42001)
	mustOK(t, call(t, srv, c.str("access_token"), "get_delivery_list", `{}`))
}

func TestStableTokenForceRefreshKillsOldAtOnce(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	old := mustOKToken(t, stableToken(t, srv, appID, appSecret, false)).str("access_token")
	fresh := mustOKToken(t, stableToken(t, srv, appID, appSecret, true)).str("access_token")
	if fresh == old {
		t.Fatal("force_refresh returned the same token")
	}
	wantErr(t, call(t, srv, old, "get_delivery_list", `{}`), 40001)
	mustOK(t, call(t, srv, fresh, "get_delivery_list", `{}`))
}

func TestCgiTokenRotatesWithOverlap(t *testing.T) {
	clk := newClock(t0)
	srv := newServer(t, wechattest.Config{Now: clk.Now})
	get := func() string {
		q := url.Values{"grant_type": {"client_credential"}, "appid": {appID}, "secret": {appSecret}}
		return mustOKToken(t, do(t, http.MethodGet, srv.URL+"/cgi-bin/token?"+q.Encode(), "", nil)).str("access_token")
	}
	first := get()
	second := get()
	if first == second {
		t.Fatal("cgi-bin/token returned the same token twice")
	}
	clk.Advance(5*time.Minute - time.Second)
	mustOK(t, call(t, srv, first, "get_delivery_list", `{}`))
	clk.Advance(time.Second)
	wantErr(t, call(t, srv, first, "get_delivery_list", `{}`), 40001)
	mustOK(t, call(t, srv, second, "get_delivery_list", `{}`))
	if got := srv.CallsTo("token"); len(got) != 2 || got[0].AppID != appID {
		t.Fatalf("CallsTo(token) = %d calls, want 2 for %s", len(got), appID)
	}
}

func TestAccessTokenErrors(t *testing.T) {
	clk := newClock(t0)
	srv := newServer(t, wechattest.Config{Now: clk.Now, TokenTTL: time.Minute})
	tok := token(t, srv)
	for _, tc := range []struct {
		name  string
		token string
		want  int
	}{
		{"missing", "", 41001},
		{"malformed", "abc def!", 40014},
		{"unknown", "86_unknownTokenOfTheRightShape", 40001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, call(t, srv, tc.token, "trace_waybill", traceBody("W1")), tc.want)
		})
	}
	clk.Advance(time.Minute)
	a := call(t, srv, tok, "trace_waybill", traceBody("W1"))
	wantErr(t, a, 42001)
	if a.str("errmsg") != "access_token expired" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	if got := srv.CallsTo("trace_waybill"); got[len(got)-1].AppID != appID || got[len(got)-1].Errcode != 42001 {
		t.Fatalf("expired call recorded as appid %q errcode %d", got[len(got)-1].AppID, got[len(got)-1].Errcode)
	}
}

func TestTokenEndpointChecksCredentials(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	wantErr(t, stableToken(t, srv, appID, "wrong", false), 40125)
	wantErr(t, stableToken(t, srv, "wxunknown", "x", false), 40013)
	wantErr(t, stableToken(t, srv, "", "x", false), 41002)
	wantErr(t, stableToken(t, srv, appID, "", false), 41004)
	wantErr(t, postJSON(t, srv, "/cgi-bin/stable_token", nil, `{"grant_type":"password","appid":"`+appID+`","secret":"`+appSecret+`"}`), 40002)
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appID}, "secret": {"wrong"}}
	wantErr(t, do(t, http.MethodGet, srv.URL+"/cgi-bin/token?"+q.Encode(), "", nil), 40125)
}

func TestAutoRegisterAcceptsAnyAppButChecksAddedOnes(t *testing.T) {
	srv := newServer(t, wechattest.Config{AutoRegister: true})
	tok := mustOKToken(t, stableToken(t, srv, "wxanyapp", "anything", false)).str("access_token")
	mustOKToken(t, stableToken(t, srv, "wxanyapp", "something else", false))
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
	if c := srv.CallsTo("trace_waybill"); c[0].AppID != "wxanyapp" {
		t.Fatalf("AppID %q, want wxanyapp", c[0].AppID)
	}
	wantErr(t, stableToken(t, srv, appID, "wrong", false), 40125)
}

// mustOKToken fails unless a carries an access_token.
func mustOKToken(t *testing.T, a answer) answer {
	t.Helper()
	if a.str("access_token") == "" || a.errcode() != 0 {
		t.Fatalf("no access_token: %v", a)
	}
	return a
}
