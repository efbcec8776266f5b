package wechat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

func newTestClient(t *testing.T, base string, tokens TokenSource) *Client {
	t.Helper()
	c, err := NewClient(Config{BaseURL: base, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func okTrace(int64, recordedRequest) (int, any) {
	return 200, `{"errcode":0,"errmsg":"ok","waybill_token":"wbt-1","unknown_field":{"x":[1,2]}}`
}

func TestTraceWaybillSendsExactRawUTF8Body(t *testing.T) {
	srv := newScripted(t, okTrace)
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok<&>"})
	req := &TraceWaybillRequest{
		OpenID:        "o-1",
		ReceiverPhone: "13800000000",
		WaybillID:     "SF1",
		GoodsInfo: GoodsInfo{DetailList: []Goods{{
			GoodsName:   "茶叶 <特级> & 礼盒",
			GoodsImgURL: "https://img.example/a.png?x=1&y=2",
		}}},
	}
	resp, err := c.TraceWaybill(context.Background(), "wxapp", req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.WaybillToken != "wbt-1" {
		t.Fatalf("waybill_token = %q, want wbt-1", resp.WaybillToken)
	}
	got := srv.requests()
	if len(got) != 1 {
		t.Fatalf("%d requests, want 1", len(got))
	}
	want := `{"openid":"o-1","receiver_phone":"13800000000","waybill_id":"SF1",` +
		`"goods_info":{"detail_list":[{"goods_name":"茶叶 <特级> & 礼盒","goods_img_url":"https://img.example/a.png?x=1&y=2"}]}}`
	if string(got[0].Body) != want {
		t.Errorf("body\n got %s\nwant %s", got[0].Body, want)
	}
	if got[0].ContentType != "application/json" {
		t.Errorf("Content-Type = %q", got[0].ContentType)
	}
	if got[0].Path != "/cgi-bin/express/delivery/open_msg/trace_waybill" {
		t.Errorf("path = %q", got[0].Path)
	}
	if got[0].Query != "access_token=tok%3C%26%3E" {
		t.Errorf("query = %q, want the token escaped", got[0].Query)
	}
}

func TestEmptyBodyEndpointsSendEmptyObject(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":0,"errmsg":"ok","delivery_list":[{"delivery_id":"SF","delivery_name":"顺丰速运"}],"count":1}`
	})
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
	got, err := c.GetDeliveryList(context.Background(), "wxapp")
	if err != nil {
		t.Fatal(err)
	}
	if got.Count != 1 || got.DeliveryList[0] != (Delivery{"SF", "顺丰速运"}) {
		t.Errorf("got %+v", got)
	}
	if b := string(srv.requests()[0].Body); b != "{}" {
		t.Errorf("body = %q, want {}", b)
	}
}

func TestNilRequestIsRejectedLocally(t *testing.T) {
	srv := newScripted(t, okTrace)
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
	if _, err := c.TraceWaybill(context.Background(), "wxapp", nil); err == nil {
		t.Fatal("nil request accepted")
	}
	if _, err := c.TraceWaybill(context.Background(), "", &TraceWaybillRequest{}); err == nil {
		t.Fatal("empty appid accepted")
	}
	if n := len(srv.requests()); n != 0 {
		t.Fatalf("%d requests sent", n)
	}
}

func TestTokenErrorRefreshesOnceAndRetriesOnce(t *testing.T) {
	for _, code := range []int{40001, 40014, 42001} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := newScripted(t, func(n int64, r recordedRequest) (int, any) {
				if strings.Contains(r.Query, "tok-1") {
					return 200, fmt.Sprintf(`{"errcode":%d,"errmsg":"access_token expired"}`, code)
				}
				return okTrace(n, r)
			})
			tokens := &fixedTokens{}
			c := newTestClient(t, srv.URL, tokens)
			resp, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
			if err != nil {
				t.Fatal(err)
			}
			if resp.WaybillToken != "wbt-1" {
				t.Errorf("waybill_token = %q", resp.WaybillToken)
			}
			reqs := srv.requests()
			if len(reqs) != 2 || tokens.refreshes != 1 {
				t.Fatalf("%d requests, %d refreshes; want 2 and 1", len(reqs), tokens.refreshes)
			}
			if string(reqs[0].Body) != string(reqs[1].Body) {
				t.Errorf("retry sent a different body")
			}
		})
	}
}

func TestTokenErrorIsRetriedOnlyOnce(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":40001,"errmsg":"invalid credential"}`
	})
	tokens := &fixedTokens{}
	c := newTestClient(t, srv.URL, tokens)
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	var we *Error
	if !errors.As(err, &we) || we.Code != 40001 || ClassOf(err) != ClassToken {
		t.Fatalf("err = %v, want errcode 40001 of class token", err)
	}
	if n := len(srv.requests()); n != 2 || tokens.refreshes != 1 {
		t.Fatalf("%d requests, %d refreshes; want 2 and 1", n, tokens.refreshes)
	}
}

func TestStaticTokenRejectedIsConfiguration(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":42001,"errmsg":"access_token expired"}`
	})
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "secret-token-value"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	if !errors.Is(err, ErrNotRefreshable) || ClassOf(err) != ClassConfiguration {
		t.Fatalf("err = %v (class %v), want ErrNotRefreshable, configuration", err, ClassOf(err))
	}
	if strings.Contains(err.Error(), "secret-token-value") {
		t.Fatalf("error shows the token: %v", err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestErrorsCarryEndpointCodeAndClass(t *testing.T) {
	cases := []struct {
		status int
		body   string
		want   Error
	}{
		{200, `{"errcode":40003,"errmsg":"invalid openid"}`,
			Error{Endpoint: "trace_waybill", Code: 40003, Msg: "invalid openid", Class: ClassPermanent}},
		{200, `{"errcode":-1,"errmsg":"system error"}`,
			Error{Endpoint: "trace_waybill", Code: -1, Msg: "system error", Class: ClassTransient}},
		{200, `{"errcode":45009,"errmsg":"reach max api daily quota limit"}`,
			Error{Endpoint: "trace_waybill", Code: 45009, Msg: "reach max api daily quota limit", Class: ClassDailyQuota}},
		{503, `<html>busy</html>`,
			Error{Endpoint: "trace_waybill", Msg: "Service Unavailable", HTTPStatus: 503, Class: ClassTransient}},
		{404, ``,
			Error{Endpoint: "trace_waybill", Msg: "Not Found", HTTPStatus: 404, Class: ClassConfiguration}},
		{403, `{"errcode":40164,"errmsg":"invalid ip"}`,
			Error{Endpoint: "trace_waybill", Code: 40164, Msg: "invalid ip", HTTPStatus: 403, Class: ClassConfiguration}},
	}
	for _, tc := range cases {
		t.Run(tc.body, func(t *testing.T) {
			srv := newScripted(t, func(int64, recordedRequest) (int, any) { return tc.status, tc.body })
			c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
			_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if *we != tc.want {
				t.Fatalf("got %+v, want %+v", *we, tc.want)
			}
		})
	}
}

func TestUndecodableAnswerIsTransient(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) { return 200, `<html>gateway</html>` })
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	if err == nil || ClassOf(err) != ClassTransient {
		t.Fatalf("err = %v, class %v; want a transient decode error", err, ClassOf(err))
	}
}

func TestNetworkErrorsHideTheToken(t *testing.T) {
	srv := newScripted(t, okTrace)
	url := srv.URL
	srv.Close() // nothing listens there now
	c := newTestClient(t, url, StaticTokenSource{"wxapp": "very-secret-token"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	if err == nil {
		t.Fatal("no error from a closed server")
	}
	if strings.Contains(err.Error(), "very-secret-token") {
		t.Fatalf("error shows the token: %v", err)
	}
	if ClassOf(err) != ClassTransient {
		t.Fatalf("class %v, want transient", ClassOf(err))
	}
}

func TestContextDeadlineIsTransient(t *testing.T) {
	block := make(chan struct{})
	srv := newScripted(t, func(int64, recordedRequest) (int, any) { <-block; return 200, "{}" })
	defer close(block)
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.TraceWaybill(ctx, "wxapp", sampleTrace())
	if !errors.Is(err, context.Canceled) || ClassOf(err) != ClassTransient {
		t.Fatalf("err = %v, class %v", err, ClassOf(err))
	}
}

func TestConfigValidate(t *testing.T) {
	cases := map[string]Config{
		"no tokens":     {},
		"relative base": {Tokens: StaticTokenSource{}, BaseURL: "api.weixin.qq.com"},
		"ftp base":      {Tokens: StaticTokenSource{}, BaseURL: "ftp://x"},
		"base w/ query": {Tokens: StaticTokenSource{}, BaseURL: "https://x/?a=1"},
	}
	for name, cfg := range cases {
		if _, err := NewClient(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c, err := NewClient(Config{Tokens: StaticTokenSource{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.wire.base != DefaultBaseURL || c.wire.hc.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify {
		t.Fatalf("defaults: base %q", c.wire.base)
	}
}

func sampleTrace() *TraceWaybillRequest {
	return &TraceWaybillRequest{
		OpenID: "o-1", ReceiverPhone: "13800000000", WaybillID: "SF1",
		GoodsInfo: GoodsInfo{DetailList: []Goods{{GoodsName: "茶叶", GoodsImgURL: "https://img.example/a.png"}}},
	}
}

func TestAnswerWithoutWaybillTokenIsTransientError(t *testing.T) {
	for _, body := range []string{`{}`, `{"errcode":0,"errmsg":"ok"}`, `{"errcode":0,"errmsg":"ok","waybill_token":""}`} {
		for _, name := range []string{"trace_waybill", "follow_waybill"} {
			t.Run(name+" "+body, func(t *testing.T) {
				srv := newScripted(t, func(int64, recordedRequest) (int, any) { return 200, body })
				c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "tok"})
				call := c.TraceWaybill
				if name == "follow_waybill" {
					call = c.FollowWaybill
				}
				resp, err := call(context.Background(), "wxapp", sampleTrace())
				if resp != nil || !errors.Is(err, ErrNoWaybillToken) {
					t.Fatalf("got %+v, %v; want no response and ErrNoWaybillToken", resp, err)
				}
				if ClassOf(err) != ClassTransient || errors.Is(err, ErrNotSent) {
					t.Errorf("class %v, not sent %v; want transient, sent", ClassOf(err), errors.Is(err, ErrNotSent))
				}
				if want := "wechat " + name + ": "; !strings.HasPrefix(err.Error(), want) {
					t.Errorf("message %q, want it to start with %q", err, want)
				}
			})
		}
	}
}

// TestOnCall: every request, token fetches included, is reported with its
// endpoint, appid, errcode and class, and never with a token.
func TestOnCall(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Config{})
	defer srv.Close()
	srv.AddApp("wxapp1", "secret-1")
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023, Times: 1})
	var mu sync.Mutex
	var calls []CallInfo
	onCall := func(c CallInfo) { mu.Lock(); calls = append(calls, c); mu.Unlock() }
	tokens, err := NewStableTokenSource(StableTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{"wxapp1": "secret-1"}, OnCall: onCall})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Config{BaseURL: srv.URL, Tokens: tokens, OnCall: onCall})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.TraceWaybill(ctx, "wxapp1", sampleTrace()); ClassOf(err) != ClassNotYet {
		t.Fatalf("first call: %v", err)
	}
	if _, err := c.TraceWaybill(ctx, "wxapp1", sampleTrace()); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 3 {
		t.Fatalf("%d calls reported, want 3: %+v", len(calls), calls)
	}
	want := []struct {
		endpoint string
		code     int
		class    Class
	}{{"stable_token", 0, 0}, {"trace_waybill", 931023, ClassNotYet}, {"trace_waybill", 0, 0}}
	for i, w := range want {
		got := calls[i]
		if got.Endpoint != w.endpoint || got.AppID != "wxapp1" || got.Errcode != w.code || got.Class != w.class || got.Duration <= 0 {
			t.Errorf("call %d: %+v, want %+v", i, got, w)
		}
		if strings.Contains(fmt.Sprintf("%+v", got), "secret-1") {
			t.Errorf("call %d shows the secret", i)
		}
	}
}

// TestDefaultClientReusesConnections: 16 callers at once, 10 calls each,
// dial at most one connection each; with Go's default of 2 idle
// connections per host they dialed over and over.
func TestDefaultClientReusesConnections(t *testing.T) {
	for _, tc := range []struct {
		name    string
		idle    int
		callers int
	}{
		{"default", 0, 16},
		{"IdleConns sized to the callers", 128, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := wechattest.NewServer(wechattest.Config{OpenIDDailyQuota: -1})
			defer srv.Close()
			srv.AddApp("wxapp1", "secret-1")
			// WeChat's tens of milliseconds keep every caller's call in
			// flight at once, as a busy service's are.
			srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: 20 * time.Millisecond})
			tokens, err := NewStableTokenSource(StableTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{"wxapp1": "secret-1"}})
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewClient(Config{BaseURL: srv.URL, Tokens: tokens, IdleConns: tc.idle})
			if err != nil {
				t.Fatal(err)
			}
			ctx, dialed := countDials(context.Background())
			// In rounds, every caller at once: all connections go idle
			// together between rounds, the worst case for the idle limit.
			const calls = 5
			for range calls {
				var wg sync.WaitGroup
				for range tc.callers {
					wg.Go(func() {
						if _, err := c.TraceWaybill(ctx, "wxapp1", sampleTrace()); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
			}
			// One more for the token source's own client.
			if n := dialed.Load(); n > int64(tc.callers)+1 {
				t.Fatalf("%d connections dialed for %d calls by %d callers: want at most one per caller", n, tc.callers*calls, tc.callers)
			}
		})
	}
}
