package wechattest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

func TestFaultErrcodeTimesThenNormal(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: -1, Times: 2})
	a := call(t, srv, tok, "trace_waybill", traceBody("W1"))
	wantErr(t, a, -1)
	if a.str("errmsg") != "system error" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	wantErr(t, call(t, srv, tok, "trace_waybill", traceBody("W1")), -1)
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
	cs := srv.CallsTo("trace_waybill")
	if !cs[0].Fault || !cs[1].Fault || cs[2].Fault || cs[0].Errcode != -1 {
		t.Fatalf("Fault flags %v %v %v", cs[0].Fault, cs[1].Fault, cs[2].Fault)
	}
}

func TestFaultMatchEndpointAndRemove(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	remove := srv.Inject(wechattest.Fault{
		Endpoint: "trace_waybill",
		Match:    func(c *wechattest.Call) bool { return c.Field("waybill_id") == "BAD" },
		Errcode:  45009, Errmsg: "custom text",
	})
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("GOOD")))
	a := call(t, srv, tok, "trace_waybill", traceBody("BAD"))
	wantErr(t, a, 45009)
	if a.str("errmsg") != "custom text" {
		t.Fatalf("errmsg %q", a.str("errmsg"))
	}
	mustOK(t, call(t, srv, tok, "get_delivery_list", `{}`))
	remove()
	remove()
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("BAD")))
}

func TestFaultHTTPStatus(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.Inject(wechattest.Fault{HTTPStatus: 503, Times: 1})
	resp, err := http.Post(srv.URL+openMsg+"trace_waybill?access_token="+tok, "application/json", strings.NewReader(traceBody("W1")))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "503") {
		t.Fatalf("HTTP %d %s", resp.StatusCode, body)
	}
	if c := srv.CallsTo("trace_waybill")[0]; c.HTTPStatus != 503 || !c.Fault {
		t.Fatalf("recorded %+v", c)
	}
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
}

func TestFaultDropClosesConnection(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Drop: true, Times: 1})
	resp, err := http.Post(srv.URL+openMsg+"trace_waybill?access_token="+tok, "application/json", strings.NewReader(traceBody("W1")))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("dropped call answered HTTP %d", resp.StatusCode)
	}
	if c := srv.CallsTo("trace_waybill")[0]; c.HTTPStatus != 0 || !c.Fault {
		t.Fatalf("recorded %+v", c)
	}
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
}

func TestFaultLatencyEndsWithClientContext(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	errc := traceAsync(ctx, srv, tok)
	waitForCalls(t, srv, "trace_waybill", 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestFaultLatencyThenNormalAnswer(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	tok := token(t, srv)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: time.Millisecond})
	mustOK(t, call(t, srv, tok, "trace_waybill", traceBody("W1")))
	if c := srv.CallsTo("trace_waybill")[0]; c.Fault || c.HTTPStatus != 200 {
		t.Fatalf("recorded %+v", c)
	}
}

func TestCloseEndsPendingLatency(t *testing.T) {
	srv := wechattest.NewServer(wechattest.Config{AutoRegister: true})
	tok := mustOKToken(t, stableToken(t, srv, appID, appSecret, false)).str("access_token")
	srv.Inject(wechattest.Fault{Latency: time.Hour})
	errc := traceAsync(context.Background(), srv, tok)
	waitForCalls(t, srv, "trace_waybill", 1)
	srv.Close() // returns only when the handler has
	if err := <-errc; err == nil {
		t.Fatal("call pending at Close got an answer")
	}
	if c := srv.CallsTo("trace_waybill")[0]; c.HTTPStatus != 0 {
		t.Fatalf("recorded %+v", c)
	}
	srv.Close()
}

func TestFaultRateIsSeededAndDeterministic(t *testing.T) {
	run := func(seed uint64) []bool {
		srv := newServer(t, wechattest.Config{Seed: seed})
		tok := token(t, srv)
		srv.Inject(wechattest.Fault{Endpoint: "get_delivery_list", Errcode: -1, Rate: 0.3})
		var faulted []bool
		for range 200 {
			faulted = append(faulted, call(t, srv, tok, "get_delivery_list", `{}`).errcode() == -1)
		}
		return faulted
	}
	a, b, c := run(7), run(7), run(8)
	count := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("call %d differs between two runs with the same seed", i)
		}
		if a[i] {
			count++
		}
	}
	if count < 30 || count > 90 {
		t.Fatalf("%d of 200 calls faulted at rate 0.3", count)
	}
	same := true
	for i := range a {
		same = same && a[i] == c[i]
	}
	if same {
		t.Fatal("seeds 7 and 8 gave the same 200 draws")
	}
}

func TestInjectPanicsOnInvalidFault(t *testing.T) {
	srv := newServer(t, wechattest.Config{})
	for _, f := range []wechattest.Fault{{Rate: 1.5}, {Rate: -0.1}, {Times: -1}, {HTTPStatus: 42}, {Latency: -time.Second}} {
		if f.Validate() == nil {
			t.Fatalf("Validate(%+v) = nil", f)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("Inject(%+v) did not panic", f)
				}
			}()
			srv.Inject(f)
		}()
	}
}

// waitForCalls waits until n calls to endpoint were recorded, polling.
func waitForCalls(t *testing.T, srv *wechattest.Server, endpoint string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(srv.CallsTo(endpoint)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d calls to %s arrived", n, endpoint)
		}
		time.Sleep(time.Millisecond)
	}
}

// traceAsync sends a trace_waybill call in the background and delivers its
// transport error (nil if it got an answer).
func traceAsync(ctx context.Context, srv *wechattest.Server, tok string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+openMsg+"trace_waybill?access_token="+tok, strings.NewReader(traceBody("W1")))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	return errc
}
