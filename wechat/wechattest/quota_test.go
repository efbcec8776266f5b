package wechattest_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

// traceFor is a valid trace_waybill body for waybillID and openid.
func traceFor(waybillID, openid string) string {
	return strings.Replace(traceBody(waybillID), openID, openid, 1)
}

func TestAppDailyQuotaResetsAtChinaMidnight(t *testing.T) {
	// 23:58 in UTC+8.
	clk := newClock(time.Date(2026, 11, 26, 15, 58, 0, 0, time.UTC))
	srv := newServer(t, wechattest.Config{Now: clk.Now, AppDailyQuota: 3, OpenIDDailyQuota: -1})
	tok := token(t, srv)
	for i := range 3 {
		mustOK(t, call(t, srv, tok, "trace_waybill", traceBody(string(rune('A'+i)))))
	}
	a := call(t, srv, tok, "trace_waybill", traceBody("D"))
	wantErr(t, a, 45009)
	if a.str("errmsg") != "reach max api daily quota limit" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	// Another path has its own quota.
	mustOK(t, call(t, srv, tok, "get_delivery_list", `{}`))
	clk.Advance(time.Minute + 59*time.Second)
	wantErr(t, call(t, srv, tok, "trace_waybill", traceBody("D")), 45009)
	clk.Advance(time.Second) // 00:00 UTC+8
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("D")))
}

func TestQuotaResetTimeAndLocationAreConfigurable(t *testing.T) {
	clk := newClock(time.Date(2026, 11, 26, 5, 59, 0, 0, time.UTC))
	srv := newServer(t, wechattest.Config{Now: clk.Now, AppDailyQuota: 1, QuotaReset: 6 * time.Hour, QuotaLocation: time.UTC})
	tok := token(t, srv)
	mustOK(t, call(t, srv, tok, "get_delivery_list", `{}`))
	wantErr(t, call(t, srv, tok, "get_delivery_list", `{}`), 45009)
	clk.Advance(time.Minute)
	mustOK(t, call(t, srv, tok, "get_delivery_list", `{}`))
	wantErr(t, call(t, srv, tok, "get_delivery_list", `{}`), 45009)
	// Midnight UTC is no reset here.
	clk.Advance(18*time.Hour - time.Minute)
	tok = token(t, srv)
	wantErr(t, call(t, srv, tok, "get_delivery_list", `{}`), 45009)
	srv.ResetQuota(appID)
	mustOK(t, call(t, srv, tok, "get_delivery_list", `{}`))
}

func TestOpenIDDailyQuota(t *testing.T) {
	clk := newClock(t0)
	srv := newServer(t, wechattest.Config{Now: clk.Now, OpenIDDailyQuota: 2, FollowOpenIDDailyQuota: 1})
	tok := token(t, srv)
	mustOK(t, call(t, srv, tok, "trace_waybill", traceFor("W1", "user-a")))
	wt := mustOK(t, call(t, srv, tok, "trace_waybill", traceFor("W2", "user-a"))).str("waybill_token")
	wantErr(t, call(t, srv, tok, "trace_waybill", traceFor("W3", "user-a")), 45009)
	wantErr(t, call(t, srv, tok, "query_trace", `{"waybill_token":"`+wt+`","openid":"user-a"}`), 45009)
	// Without openid query_trace is not counted per user.
	mustOK(t, call(t, srv, tok, "query_trace", `{"waybill_token":"`+wt+`"}`))
	mustOK(t, call(t, srv, tok, "trace_waybill", traceFor("W3", "user-b")))
	// The message component counts separately, with its own limit.
	mustOK(t, call(t, srv, tok, "follow_waybill", traceFor("W1", "user-a")))
	wantErr(t, call(t, srv, tok, "follow_waybill", traceFor("W2", "user-a")), 45009)
	clk.Advance(24 * time.Hour)
	mustOK(t, call(t, srv, token(t, srv), "trace_waybill", traceFor("W3", "user-a")))
}

func TestMinuteLimit(t *testing.T) {
	clk := newClock(time.Date(2026, 11, 26, 10, 0, 30, 0, time.UTC))
	srv := newServer(t, wechattest.Config{Now: clk.Now, MinuteLimit: 2})
	tok := token(t, srv)
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W2")))
	a := call(t, srv, tok, "trace_waybill", traceBody("W3"))
	wantErr(t, a, 45011)
	if a.str("errmsg") != "api minute-quota reach limit  mustslower  retry next minute" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	if _, ok := srv.Waybill(appID, "W3"); ok {
		t.Fatal("a refused call created its waybill")
	}
	clk.Advance(29 * time.Second)
	wantErr(t, call(t, srv, tok, "trace_waybill", traceBody("W3")), 45011)
	clk.Advance(time.Second) // next calendar minute
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W3")))
	q := mustOK(t, postJSON(t, srv, "/cgi-bin/openapi/quota/get", map[string][]string{"access_token": {tok}},
		`{"cgi_path":"/cgi-bin/express/delivery/open_msg/trace_waybill"}`))["quota"].(map[string]any)
	if q["used"] != 3.0 {
		t.Fatalf("used %v: refused calls must not count", q["used"])
	}
}

func TestQuotaIsExactUnderConcurrency(t *testing.T) {
	srv := newServer(t, wechattest.Config{AppDailyQuota: 10, OpenIDDailyQuota: -1})
	tok := token(t, srv)
	var (
		mu     sync.Mutex
		counts = map[int]int{}
		wg     sync.WaitGroup
	)
	for i := range 30 {
		wg.Go(func() {
			code := call(t, srv, tok, "trace_waybill", traceBody(fmt.Sprint("W", i))).errcode()
			mu.Lock()
			counts[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if counts[0] != 10 || counts[45009] != 20 {
		t.Fatalf("answers %v, want 10 ok and 20 45009", counts)
	}
}

func TestNegativeQuotaMeansUnlimited(t *testing.T) {
	srv := newServer(t, wechattest.Config{AppDailyQuota: -1, OpenIDDailyQuota: -1})
	tok := token(t, srv)
	for i := range 150 {
		mustOK(t, call(t, srv, tok, "trace_waybill", traceBody(fmt.Sprint("W", i%10))))
	}
}

func TestMarkUnknown(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.MarkUnknown(appID, "W1")
	a := call(t, srv, tok, "trace_waybill", traceBody("W1"))
	wantErr(t, a, 931023)
	wantErr(t, call(t, srv, tok, "follow_waybill", traceBody("W1")), 931023)
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W2")))
	if _, ok := srv.Waybill(appID, "W1"); ok {
		t.Fatal("unknown waybill was created")
	}
	srv.MarkKnown(appID, "W1")
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
}

func TestConfigValidate(t *testing.T) {
	if err := (wechattest.Config{}).Validate(); err != nil {
		t.Fatalf("zero Config: %v", err)
	}
	for _, cfg := range []wechattest.Config{
		{TokenTTL: -time.Second},
		{TokenOverlap: -time.Second},
		{RefreshTokenGrace: -time.Second},
		{MinuteLimit: -1},
		{QuotaReset: 24 * time.Hour},
		{QuotaReset: -time.Minute},
		{Deliveries: []wechattest.Delivery{{Name: "无编号"}}},
	} {
		if cfg.Validate() == nil {
			t.Errorf("Validate(%+v) = nil", cfg)
		}
	}
	defer func() {
		if recover() == nil {
			t.Fatal("NewServer with an invalid Config did not panic")
		}
	}()
	wechattest.NewServer(wechattest.Config{MinuteLimit: -1}).Close()
}
