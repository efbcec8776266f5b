package wechattest_test

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

// goodsNames lists detail_list[].goods_name of a query_trace answer.
func goodsNames(t *testing.T, a answer) []string {
	t.Helper()
	shop, _ := a["shop_info"].(map[string]any)
	gi, _ := shop["goods_info"].(map[string]any)
	list, _ := gi["detail_list"].([]any)
	var names []string
	for _, g := range list {
		names = append(names, g.(map[string]any)["goods_name"].(string))
	}
	return names
}

func status(a answer) int {
	wi, _ := a["waybill_info"].(map[string]any)
	n, _ := wi["status"].(float64)
	return int(n)
}

func TestQueryTraceFollowsScript(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.SetTrace(appID, "W1", 0, 1, 2, 3, 4)
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	q := `{"waybill_token":"` + wt + `","openid":"` + openID + `"}`
	var got []int
	for range 7 {
		a := mustOK(t, call(t, srv, tok, "query_trace", q))
		got = append(got, status(a))
	}
	if want := []int{0, 1, 2, 3, 4, 4, 4}; !slices.Equal(got, want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	a := mustOK(t, call(t, srv, tok, "query_trace", q))
	if wi := a["waybill_info"].(map[string]any); wi["waybill_id"] != "W1" {
		t.Fatalf("waybill_info %v", wi)
	}
	if di := a["delivery_info"].(map[string]any); di["delivery_id"] != "YD" || di["delivery_name"] != "韵达速递" {
		t.Fatalf("delivery_info %v", di)
	}
	if names := goodsNames(t, a); len(names) != 1 || names[0] != "测试名字" {
		t.Fatalf("goods %v", names)
	}
	if w, _ := srv.Waybill(appID, "W1"); w.Queries != 8 {
		t.Fatalf("Queries = %d, want 8", w.Queries)
	}

	// A script set after creation takes effect; without one the status is 0.
	wt2 := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W2"))).str("waybill_token")
	q2 := `{"waybill_token":"` + wt2 + `"}`
	if s := status(mustOK(t, call(t, srv, tok, "query_trace", q2))); s != 0 {
		t.Fatalf("unscripted status %d", s)
	}
	srv.SetTrace(appID, "W2", 1, 5, 6)
	if s := status(mustOK(t, call(t, srv, tok, "query_trace", q2))); s != 5 {
		t.Fatalf("second query of a waybill scripted 1,5,6 answered %d, want 5", s)
	}
}

func TestQueryTraceBadTokens(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	srv.AddApp("wxother", "x")
	tok := token(t, srv)
	other := mustOKToken(t, stableToken(t, srv, "wxother", "x", false)).str("access_token")
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	wantErr(t, call(t, srv, tok, "query_trace", `{}`), 47001)
	wantErr(t, call(t, srv, tok, "query_trace", `{"waybill_token":"nope"}`), 9300507)
	wantErr(t, call(t, srv, other, "query_trace", `{"waybill_token":"`+wt+`"}`), 9300507)
	wantErr(t, call(t, srv, other, "update_waybill_goods", `{"waybill_token":"`+wt+`","goods_info":{"detail_list":[{"goods_name":"x","goods_img_url":"u"}]}}`), 9300507)
}

func TestUpdateWaybillGoodsRoundTripsText(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	const name, desc = `华为 Mate <X> & "折叠" 屏`, `<b>限量</b> & 赠品：充电器`
	body := `{"waybill_token":"` + wt + `","goods_info":{"detail_list":[{"goods_name":"华为 Mate <X> & \"折叠\" 屏","goods_img_url":"https://img.example.com/a.jpg?x=1&y=2","goods_desc":"<b>限量</b> & 赠品：充电器"},{"goods_name":"保护壳","goods_img_url":"u2"}]}}`
	mustOK(t, call(t, srv, tok, "update_waybill_goods", body))
	wantErr(t, call(t, srv, tok, "update_waybill_goods", `{"waybill_token":"`+wt+`","goods_info":{"detail_list":[]}}`), 47001)

	resp, err := http.Post(srv.URL+openMsg+"query_trace?access_token="+tok, "application/json", strings.NewReader(`{"waybill_token":"`+wt+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q", ct)
	}
	for _, want := range []string{name[:6], "<X> & ", `\"折叠\"`, "<b>限量</b> & 赠品：充电器", "?x=1&y=2", `"goods_desc":"保护壳"`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Fatalf("answer lacks raw %q: %s", want, raw)
		}
	}
	if bytes.Contains(raw, []byte(`\u`)) {
		t.Fatalf("answer has \\u escapes: %s", raw)
	}
	w, _ := srv.Waybill(appID, "W1")
	if len(w.Goods) != 2 || w.Goods[0].Name != name || w.Goods[0].Desc != desc || w.Goods[1].Desc != "保护壳" {
		t.Fatalf("goods %+v", w.Goods)
	}
}

func TestGetDeliveryList(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	a := mustOK(t, call(t, srv, token(t, srv), "get_delivery_list", `{}`))
	list := a["delivery_list"].([]any)
	if int(a["count"].(float64)) != len(list) || len(list) < 8 {
		t.Fatalf("count %v, %d carriers", a["count"], len(list))
	}
	names := map[string]string{}
	for _, d := range list {
		m := d.(map[string]any)
		names[m["delivery_id"].(string)] = m["delivery_name"].(string)
	}
	for id, name := range map[string]string{"YD": "韵达速递", "SF": "顺丰速运", "ZTO": "中通快递"} {
		if names[id] != name {
			t.Fatalf("carrier %s named %q, want %q", id, names[id], name)
		}
	}

	custom := newServer(t, wechattest.Config{Deliveries: []wechattest.Delivery{{ID: "XX", Name: "某某快递"}}})
	b := mustOK(t, call(t, custom, token(t, custom), "get_delivery_list", `{}`))
	if b["count"].(float64) != 1 {
		t.Fatalf("custom list %v", b)
	}
}

func TestFollowLineTokensAreSeparate(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	trace := mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1"))).str("waybill_token")
	follow := mustOK(t, call(t, srv, tok, "follow_waybill", traceBody("W1"))).str("waybill_token")
	if follow == "" || follow == trace {
		t.Fatalf("follow token %q, trace token %q", follow, trace)
	}
	if again := mustOK(t, call(t, srv, tok, "follow_waybill", traceBody("W1"))).str("waybill_token"); again != follow {
		t.Fatal("follow_waybill token not stable")
	}
	wantErr(t, call(t, srv, tok, "query_follow_trace", `{"waybill_token":"`+trace+`"}`), 9300507)
	wantErr(t, call(t, srv, tok, "query_trace", `{"waybill_token":"`+follow+`"}`), 9300507)
	wantErr(t, call(t, srv, tok, "update_follow_waybill_goods", `{"waybill_token":"`+trace+`","goods_info":{"detail_list":[{"goods_name":"x","goods_img_url":"u"}]}}`), 9300507)

	srv.SetTrace(appID, "W1", 1, 2)
	mustOK(t, call(t, srv, tok, "update_follow_waybill_goods", `{"waybill_token":"`+follow+`","goods_info":{"detail_list":[{"goods_name":"新商品","goods_img_url":"u"}]}}`))
	a := mustOK(t, call(t, srv, tok, "query_follow_trace", `{"waybill_token":"`+follow+`"}`))
	if names := goodsNames(t, a); status(a) != 1 || len(names) != 1 || names[0] != "新商品" {
		t.Fatalf("status %d goods %v", status(a), names)
	}
	// The query plugin's waybill keeps its own goods and script position.
	b := mustOK(t, call(t, srv, tok, "query_trace", `{"waybill_token":"`+trace+`"}`))
	if names := goodsNames(t, b); status(b) != 1 || names[0] != "测试名字" {
		t.Fatalf("trace line: status %d goods %v", status(b), names)
	}
	fw, ok := srv.FollowWaybill(appID, "W1")
	if !ok || !fw.Follow || fw.Token != follow || fw.Queries != 1 {
		t.Fatalf("FollowWaybill = %+v", fw)
	}
	wantErr(t, call(t, srv, tok, "follow_waybill", `{"waybill_id":"W9"}`), 40003)
}

func TestQuotaGet(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	for i := range 3 {
		mustOK(t, call(t, srv, tok, "trace_waybill", traceBody(string(rune('A'+i)))))
	}
	wantErr(t, call(t, srv, tok, "trace_waybill", `{"openid":"o"}`), 47001)
	a := mustOK(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", map[string][]string{"access_token": {tok}}, `{"cgi_path":"/cgi-bin/express/delivery/open_msg/trace_waybill"}`))
	q := a["quota"].(map[string]any)
	if q["daily_limit"] != 100000.0 || q["used"] != 4.0 || q["remain"] != 99996.0 {
		t.Fatalf("quota %v, want 100000/4/99996", q)
	}
	b := mustOK(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", map[string][]string{"access_token": {tok}}, `{"cgi_path":"/cgi-bin/express/delivery/open_msg/query_trace"}`))
	if b["quota"].(map[string]any)["used"] != 0.0 {
		t.Fatalf("query_trace quota %v", b)
	}
	wantErr(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", map[string][]string{"access_token": {tok}}, `{}`), 47001)
	wantErr(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", map[string][]string{"access_token": {tok}}, `{"cgi_path":"/cgi-bin/nothing"}`), 76021)
	wantErr(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", nil, `{"cgi_path":"/cgi-bin/express/delivery/open_msg/trace_waybill"}`), 41001)
	if c := srv.CallsTo("/cgi-bin/openapi/quota/get"); len(c) != 5 || c[0].Endpoint != "get" || c[0].AppID != appID {
		t.Fatalf("quota/get calls %+v", c)
	}
}
