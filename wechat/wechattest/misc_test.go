package wechattest_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

func TestTraceWaybillTextComesBackUnchanged(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	body := `{"openid":"` + openID + `","waybill_id":"SF1400000001","receiver_phone":"13800138000","delivery_id":"SF",` +
		`"goods_info":{"detail_list":[{"goods_name":"五常大米 <5kg> & 赠品","goods_img_url":"https://img.example.com/r.jpg?a=1&b=2","goods_desc":"新米 & 包邮 <限时>"}]}}`
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", body)).str("waybill_token")
	resp, err := http.Post(srv.URL+openMsg+"query_trace?access_token="+tok, "application/json", strings.NewReader(`{"waybill_token":"`+wt+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `{"goods_name":"五常大米 <5kg> & 赠品","goods_img_url":"https://img.example.com/r.jpg?a=1&b=2","goods_desc":"新米 & 包邮 <限时>"}`
	if !bytes.Contains(raw, []byte(want)) {
		t.Fatalf("answer %s lacks %s", raw, want)
	}
	if !bytes.Contains(raw, []byte(`"delivery_info":{"delivery_id":"SF","delivery_name":"顺丰速运"}`)) {
		t.Fatalf("answer %s lacks the carrier", raw)
	}
}

func TestUnknownCarrierHasNoName(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", strings.Replace(traceBody("W1"), `"YD"`, `"NOPE"`, 1))).str("waybill_token")
	a := mustOK(t, call(t, srv, tok, "query_trace", `{"waybill_token":"`+wt+`"}`))
	if di := a["delivery_info"].(map[string]any); di["delivery_id"] != "NOPE" || di["delivery_name"] != "" {
		t.Fatalf("delivery_info %v", di)
	}
}

func TestResetRemovesFaultsAndKeepsState(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	remove := srv.Inject(wechattest.Fault{Errcode: -1})
	wantErr(t, call(t, srv, tok, "trace_waybill", traceBody("W1")), -1)
	srv.Reset()
	remove() // still safe after Reset
	if got := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token"); got != wt {
		t.Fatal("Reset lost the waybill")
	}
	if n := len(srv.Calls()); n != 1 {
		t.Fatalf("%d calls after Reset and one call", n)
	}
}

func TestFaultWithoutEndpointHitsTokenEndpoints(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.Inject(wechattest.Fault{Errcode: 40164, Times: 1})
	a := stableToken(t, srv, appID, appSecret, false)
	wantErr(t, a, 40164)
	if a.str("errmsg") != wechattest.Errmsg(40164) || wechattest.Errmsg(123456) != "unknown error" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	token(t, srv)
}

func TestAddAuthorizerAgainReplacesRefreshToken(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.AddComponent(componentID, "csecret", "")
	srv.AddAuthorizer(componentID, merchantID, "refresh-old")
	srv.AddAuthorizer(componentID, merchantID, "refresh-new")
	if got := srv.RefreshToken(merchantID); got != "refresh-new" {
		t.Fatalf("RefreshToken = %q", got)
	}
	ctok := componentToken(t, srv, "csecret", "t").str("component_access_token")
	wantErr(t, authorizerToken(t, srv, ctok, "refresh-old"), 61023)
	if authorizerToken(t, srv, ctok, "refresh-new").str("authorizer_access_token") == "" {
		t.Fatal("re-authorized refresh token refused")
	}
	if srv.RefreshToken("wxnobody") != "" {
		t.Fatal("RefreshToken of an unknown authorizer")
	}
}

func TestServeHTTPMountsElsewhere(t *testing.T) {
	calls := make(chan wechattest.Call, 10)
	srv := wechattest.NewUnstartedServer(wechattest.Config{AutoRegister: true, OnCall: func(c wechattest.Call) { calls <- c }})
	defer srv.Close()
	hs := httptest.NewServer(srv)
	defer hs.Close()
	resp, err := http.Post(hs.URL+"/cgi-bin/stable_token", "application/json",
		strings.NewReader(`{"grant_type":"client_credential","appid":"wxm","secret":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if c := <-calls; c.Endpoint != "stable_token" || c.AppID != "wxm" || c.HTTPStatus != 200 {
		t.Fatalf("OnCall got %+v", c)
	}
}
