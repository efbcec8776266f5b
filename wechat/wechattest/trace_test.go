package wechattest_test

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

func TestTraceWaybillContentType(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	u := srv.URL + openMsg + "trace_waybill?" + url.Values{"access_token": {tok}}.Encode()
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded"} {
		a := do(t, http.MethodPost, u, ct, []byte(traceBody("W1")))
		wantErr(t, a, 40003)
		if a.str("errmsg") != "invalid openid" {
			t.Fatalf("Content-Type %q: errmsg %q", ct, a.str("errmsg"))
		}
	}
	mustOK(t, do(t, http.MethodPost, u, "application/json; charset=utf-8", []byte(traceBody("W1"))))
}

func TestTraceWaybillRequiredFields(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	good := `{"goods_name":"g","goods_img_url":"u"}`
	for _, tc := range []struct {
		name, body string
		want       int
	}{
		{"no openid", `{"waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[` + good + `]}}`, 40003},
		{"no waybill_id", `{"openid":"o","receiver_phone":"1","goods_info":{"detail_list":[` + good + `]}}`, 47001},
		{"no receiver_phone", `{"openid":"o","waybill_id":"W","goods_info":{"detail_list":[` + good + `]}}`, 47001},
		{"no goods_info", `{"openid":"o","waybill_id":"W","receiver_phone":"1"}`, 47001},
		{"empty detail_list", `{"openid":"o","waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[]}}`, 47001},
		{"no goods_name", `{"openid":"o","waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[{"goods_img_url":"u"}]}}`, 47001},
		{"no goods_img_url", `{"openid":"o","waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[{"goods_name":"g"}]}}`, 47001},
		{"goods_desc 41 chars", `{"openid":"o","waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[{"goods_name":"g","goods_img_url":"u","goods_desc":"` + strings.Repeat("字", 41) + `"}]}}`, 47001},
		{"goods_desc 40 chars", `{"openid":"o","waybill_id":"W","receiver_phone":"1","goods_info":{"detail_list":[{"goods_name":"g","goods_img_url":"u","goods_desc":"` + strings.Repeat("字", 40) + `"}]}}`, 0},
		{"not JSON", `{"openid":`, 47001},
		{"wrong type", `{"openid":12}`, 47001},
		{"no trans_id is fine", `{"openid":"o","waybill_id":"W2","receiver_phone":"1","goods_info":{"detail_list":[` + good + `]}}`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := call(t, srv, tok, "trace_waybill", tc.body)
			if tc.want == 0 {
				mustOK(t, a)
				return
			}
			wantErr(t, a, tc.want)
			if tc.want == 47001 && !strings.HasPrefix(a.str("errmsg"), "data format error") {
				t.Fatalf("errmsg %q", a.str("errmsg"))
			}
		})
	}
}

func TestTraceWaybillTokenIsStablePerAppAndWaybill(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.AddApp("wxother", "x")
	tok := token(t, srv)
	other := mustOKToken(t, stableToken(t, srv, "wxother", "x", false)).str("access_token")

	first := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	if first == "" {
		t.Fatal("no waybill_token")
	}
	// Repeating with other goods keeps the token and the goods.
	repeat := strings.Replace(traceBody("W1"), "测试名字", "别的商品", 1)
	if got := mustOK(t, call(t, srv, tok, "trace_waybill", repeat)).str("waybill_token"); got != first {
		t.Fatalf("repeat gave token %q, want %q", got, first)
	}
	w, ok := srv.Waybill(appID, "W1")
	if !ok || w.Token != first || w.Goods[0].Name != "测试名字" {
		t.Fatalf("Waybill = %+v, %v; want goods unchanged by the repeat", w, ok)
	}
	second := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W2"))).str("waybill_token")
	otherApp := mustOK(t, call(t, srv, other, "trace_waybill", traceBody("W1"))).str("waybill_token")
	if second == first || otherApp == first || otherApp == second {
		t.Fatalf("tokens not distinct: %q %q %q", first, second, otherApp)
	}
}

func TestTraceWaybillConcurrentCallersShareOneToken(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	const n = 32
	tokens := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tokens[i] = call(t, srv, tok, "trace_waybill", traceBody("WCONC")).str("waybill_token")
		})
	}
	wg.Wait()
	for i, got := range tokens {
		if got == "" || got != tokens[0] {
			t.Fatalf("caller %d got %q, caller 0 got %q", i, got, tokens[0])
		}
	}
	if got := len(srv.CallsTo("trace_waybill")); got != n {
		t.Fatalf("%d calls recorded, want %d", got, n)
	}
}

func TestCallsRecordRawRequest(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	body := []byte(`{"openid":"` + openID + `","waybill_id":"W<1>&","receiver_phone":"13800138000","goods_info":{"detail_list":[{"goods_name":"小米 <Pro> & 充电器","goods_img_url":"u"}]}}`)
	mustOK(t, do(t, http.MethodPost, srv.URL+openMsg+"trace_waybill?access_token="+tok, "application/json", body))
	wantErr(t, call(t, srv, "86_nope", "trace_waybill", `{}`), 40001)

	all := srv.Calls()
	if len(all) != 3 || all[0].Endpoint != "stable_token" || all[1].Endpoint != "trace_waybill" {
		t.Fatalf("Calls = %d, endpoints %v", len(all), endpoints(all))
	}
	c := srv.CallsTo("trace_waybill")[0]
	if !bytes.Equal(c.Body, body) {
		t.Fatalf("Body = %s, want the bytes sent", c.Body)
	}
	if c.AppID != appID || c.Errcode != 0 || c.HTTPStatus != 200 || c.Method != "POST" || c.Query.Get("access_token") != tok {
		t.Fatalf("Call = %+v", c)
	}
	if c.Header.Get("Content-Type") != "application/json" || c.At.IsZero() {
		t.Fatalf("Header %v At %v", c.Header, c.At)
	}
	if c.Field("waybill_id") != "W<1>&" || c.Field("openid") != openID || c.Field("absent") != "" {
		t.Fatalf("Field: %q %q", c.Field("waybill_id"), c.Field("openid"))
	}
	if got := c.Field("goods_info"); !strings.HasPrefix(got, `{"detail_list"`) {
		t.Fatalf("Field(goods_info) = %q, want its JSON text", got)
	}
	if bad := srv.CallsTo(openMsg + "trace_waybill"); len(bad) != 2 || bad[1].AppID != "" || bad[1].Errcode != 40001 {
		t.Fatalf("CallsTo(full path) = %+v", bad)
	}
	srv.Reset()
	if got := len(srv.Calls()); got != 0 {
		t.Fatalf("%d calls after Reset", got)
	}
}

func TestUnknownPathIs404AndRecorded(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	resp, err := http.Post(srv.URL+"/cgi-bin/nothing_here", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HTTP %d, want 404", resp.StatusCode)
	}
	if c := srv.CallsTo("nothing_here"); len(c) != 1 || c[0].HTTPStatus != 404 {
		t.Fatalf("calls %+v", c)
	}
}

func endpoints(cs []wechattest.Call) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Endpoint)
	}
	return out
}
