package wechattest_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

const (
	componentID = "wxcomponent0000001"
	merchantID  = "wxmerchant00000001"
	ticket      = "ticket@@@abc"
)

func componentToken(t *testing.T, srv *wechattest.Server, secret, tkt string) answer {
	t.Helper()
	return postJSON(t, srv, "/cgi-bin/component/api_component_token", nil,
		`{"component_appid":"`+componentID+`","component_appsecret":"`+secret+`","component_verify_ticket":"`+tkt+`"}`)
}

func authorizerToken(t *testing.T, srv *wechattest.Server, ctok, refresh string) answer {
	t.Helper()
	return postJSON(t, srv, "/cgi-bin/component/api_authorizer_token", url.Values{"component_access_token": {ctok}},
		`{"component_appid":"`+componentID+`","authorizer_appid":"`+merchantID+`","authorizer_refresh_token":"`+refresh+`"}`)
}

func TestComponentAccessToken(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.AddComponent(componentID, "csecret", ticket)
	wantErr(t, componentToken(t, srv, "wrong", ticket), 40125)
	wantErr(t, componentToken(t, srv, "csecret", "stale-ticket"), 61006)
	wantErr(t, postJSON(t, srv, "/cgi-bin/component/api_component_token", nil, `{"component_appid":"wxnope","component_appsecret":"x","component_verify_ticket":"t"}`), 40013)
	wantErr(t, postJSON(t, srv, "/cgi-bin/component/api_component_token", nil, `{"component_appid":"`+componentID+`"}`), 41004)
	a := componentToken(t, srv, "csecret", ticket)
	ctok := a.str("component_access_token")
	if ctok == "" || a["expires_in"] != 7200.0 {
		t.Fatalf("api_component_token answered %v", a)
	}
	// A component_access_token is no access_token.
	wantErr(t, call(t, srv, ctok, "get_delivery_list", `{}`), 40001)
	if c := srv.CallsTo("api_component_token"); c[len(c)-1].AppID != componentID {
		t.Fatalf("AppID %q", c[len(c)-1].AppID)
	}
}

func TestAuthorizerRefreshTokenRotation(t *testing.T) {
	clk := newClock(t0)
	srv := newServer(t, wechattest.Config{Now: clk.Now})
	srv.AddComponent(componentID, "csecret", "")
	srv.AddAuthorizer(componentID, merchantID, "refresh-0")
	ctok := componentToken(t, srv, "csecret", "any ticket").str("component_access_token")

	wantErr(t, authorizerToken(t, srv, "", "refresh-0"), 41001)
	wantErr(t, authorizerToken(t, srv, "86_notAComponentToken", "refresh-0"), 40001)
	wantErr(t, authorizerToken(t, srv, ctok, "refresh-unknown"), 61023)

	first := authorizerToken(t, srv, ctok, "refresh-0")
	a1, r1 := first.str("authorizer_access_token"), first.str("authorizer_refresh_token")
	if a1 == "" || r1 == "" || r1 == "refresh-0" || first["expires_in"] != 7200.0 {
		t.Fatalf("api_authorizer_token answered %v", first)
	}
	if got := srv.RefreshToken(merchantID); got != r1 {
		t.Fatalf("RefreshToken = %q, want the rotated %q", got, r1)
	}
	tr := mustOK(t, call(t, srv, a1, "trace_waybill", traceBody("W1")))
	if tr.str("waybill_token") == "" {
		t.Fatal("no waybill_token for the merchant")
	}
	if c := srv.CallsTo("trace_waybill"); c[0].AppID != merchantID {
		t.Fatalf("call acts for %q, want the merchant", c[0].AppID)
	}

	// The old refresh token works for 5 more minutes, then 61023.
	clk.Advance(4 * time.Minute)
	second := authorizerToken(t, srv, ctok, "refresh-0")
	a2, r2 := second.str("authorizer_access_token"), second.str("authorizer_refresh_token")
	if a2 == "" || r2 == "" || r2 == r1 {
		t.Fatalf("second rotation answered %v", second)
	}
	clk.Advance(time.Minute)
	wantErr(t, authorizerToken(t, srv, ctok, "refresh-0"), 61023)
	// a1 dies TokenOverlap after a2 was issued.
	mustOK(t, call(t, srv, a1, "get_delivery_list", `{}`))
	clk.Advance(4 * time.Minute)
	wantErr(t, call(t, srv, a1, "get_delivery_list", `{}`), 40001)
	mustOK(t, call(t, srv, a2, "get_delivery_list", `{}`))
	wantErr(t, authorizerToken(t, srv, ctok, r1), 61023)
	third := authorizerToken(t, srv, ctok, r2)
	if third.str("authorizer_access_token") == "" {
		t.Fatalf("current refresh token refused: %v", third)
	}
}

func TestProviderOnlyEndpointsAndPermission(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.AddComponent(componentID, "csecret", "")
	srv.AddAuthorizer(componentID, merchantID, "refresh-0")
	ctok := componentToken(t, srv, "csecret", "t").str("component_access_token")
	atok := authorizerToken(t, srv, ctok, "refresh-0").str("authorizer_access_token")
	own := token(t, srv)
	for _, ep := range []string{"open_openmsg", "open_query_plugin"} {
		wantErr(t, call(t, srv, own, ep, `{}`), 48001)
		mustOK(t, call(t, srv, atok, ep, `{}`))
	}
	srv.SetLogisticsPermission(merchantID, false)
	wantErr(t, call(t, srv, atok, "trace_waybill", traceBody("W1")), 61007)
	wantErr(t, call(t, srv, atok, "open_query_plugin", `{}`), 61007)
	srv.SetLogisticsPermission(merchantID, true)
	mustOK(t, call(t, srv, atok, "trace_waybill", traceBody("W1")))
}

func TestAddAuthorizerNeedsComponent(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	defer func() {
		if recover() == nil {
			t.Fatal("AddAuthorizer for an unknown component did not panic")
		}
	}()
	srv.AddAuthorizer("wxnone", merchantID, "r")
}
