package wechat

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// countErrcode counts the sandbox's answers with errcode code.
func countErrcode(srv *wechattest.Server, endpoint string, code int) int {
	n := 0
	for _, c := range srv.CallsTo(endpoint) {
		if c.Errcode == code {
			n++
		}
	}
	return n
}

// accessClients builds n clients, each on its own AccessTokenSource (as n
// processes would), over the stores store(i) gives.
func accessClients(t *testing.T, srv *wechattest.Server, clock *testclock.Clock, n int, store func(i int) TokenStore) []*Client {
	t.Helper()
	clients := make([]*Client, n)
	for i := range clients {
		src, err := NewAccessTokenSource(AccessTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{appID: appSecret},
			Store: store(i), Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = newTestClient(t, srv.URL, src)
	}
	return clients
}

// runPhases runs every client in its own goroutine for perPhase calls, then
// moves clock by step, phases times. Phases make the count of token lifetimes
// exact: the clock never moves while a call is on the wire.
func runPhases(t *testing.T, clients []*Client, clock *testclock.Clock, phases, perPhase int, step time.Duration) {
	t.Helper()
	for p := range phases {
		var wg sync.WaitGroup
		errs := make(chan error, len(clients)*perPhase)
		for _, c := range clients {
			wg.Go(func() {
				for range perPhase {
					if _, err := c.TraceWaybill(context.Background(), appID, sampleTrace()); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("phase %d: %v", p, err)
		}
		clock.Advance(step)
	}
}

// lifetimeConfig makes tokens live 10 minutes, so that a test spans several
// lifetimes: a token fetched at t is renewed at t+9m (DefaultEarly before).
var lifetimeConfig = wechattest.Config{TokenTTL: 10 * time.Minute, AppDailyQuota: -1, OpenIDDailyQuota: -1}

func sharingSandbox(t *testing.T, clock *testclock.Clock) *wechattest.Server {
	t.Helper()
	cfg := lifetimeConfig
	cfg.Now = clock.Now
	srv := wechattest.NewServer(cfg)
	t.Cleanup(srv.Close)
	srv.AddApp(appID, appSecret)
	return srv
}

// wantFetches is the fetch count over phases one minute apart: at 0, 9m, 18m, ...
func wantFetches(phases int) int { return (phases-1)/9 + 1 }

func TestSharedStoreOneFetchPerLifetime(t *testing.T) {
	clock := newFakeClock()
	srv := sharingSandbox(t, clock)
	store := new(MemoryStore)
	clients := accessClients(t, srv, clock, 6, func(int) TokenStore { return store })
	const phases = 30
	runPhases(t, clients, clock, phases, 4, time.Minute)
	if got, want := len(srv.CallsTo("token")), wantFetches(phases); got != want {
		t.Errorf("%d token fetches, want %d (one per lifetime)", got, want)
	}
	if n := countErrcode(srv, "trace_waybill", 40001) + countErrcode(srv, "trace_waybill", 42001); n != 0 {
		t.Errorf("%d calls answered with a token error", n)
	}
	if got, want := len(srv.CallsTo("trace_waybill")), phases*6*4; got != want {
		t.Errorf("%d trace calls, want %d: some were retried", got, want)
	}
}

// TestSeparateStoresFightOverTheToken shows what the shared store prevents:
// processes that each fetch from cgi-bin/token invalidate each other's tokens.
// The client heals every 40001 with its one refresh and retry, but WeChat
// sees them and the fetches multiply.
func TestSeparateStoresFightOverTheToken(t *testing.T) {
	clock := newFakeClock()
	srv := sharingSandbox(t, clock)
	clients := accessClients(t, srv, clock, 3, func(int) TokenStore { return new(MemoryStore) })
	const phases = 30
	runPhases(t, clients, clock, phases, 2, time.Minute)
	if n := countErrcode(srv, "trace_waybill", 40001); n == 0 {
		t.Error("no 40001 answers: the sandbox did not invalidate superseded tokens")
	}
	if got := len(srv.CallsTo("token")); got <= wantFetches(phases) {
		t.Errorf("%d token fetches, want more than %d", got, wantFetches(phases))
	}
}

// TestExpiredMidRunHealedByOneRefresh expires the token at WeChat while the
// clients still believe in it (their clock lags): every caller that meets
// 42001 shares one refresh and retries once.
func TestExpiredMidRunHealedByOneRefresh(t *testing.T) {
	serverClock, clientClock := newFakeClock(), newFakeClock()
	srv := sharingSandbox(t, serverClock)
	store := new(MemoryStore)
	clients := accessClients(t, srv, clientClock, 5, func(int) TokenStore { return store })
	runPhases(t, clients, serverClock, 1, 3, 0)
	if n := len(srv.CallsTo("token")); n != 1 {
		t.Fatalf("%d fetches before expiry, want 1", n)
	}
	serverClock.Advance(11 * time.Minute) // expired at WeChat only
	runPhases(t, clients, serverClock, 1, 3, 0)

	expired := countErrcode(srv, "trace_waybill", 42001)
	if expired == 0 || expired > len(clients) {
		t.Fatalf("%d calls met 42001, want between 1 and %d (one per client at most)", expired, len(clients))
	}
	if n := len(srv.CallsTo("token")); n != 2 {
		t.Errorf("%d token fetches, want 2: exactly one refresh", n)
	}
	if got, want := len(srv.CallsTo("trace_waybill")), 2*5*3+expired; got != want {
		t.Errorf("%d trace calls, want %d: each 42001 retried exactly once", got, want)
	}
	if n := countErrcode(srv, "trace_waybill", 40001); n != 0 {
		t.Errorf("%d calls met 40001", n)
	}
}

func TestExpiredMidRunOneCaller(t *testing.T) {
	serverClock, clientClock := newFakeClock(), newFakeClock()
	srv := sharingSandbox(t, serverClock)
	c := accessClients(t, srv, clientClock, 1, func(int) TokenStore { return nil })[0]
	ctx := context.Background()
	if _, err := c.TraceWaybill(ctx, appID, sampleTrace()); err != nil {
		t.Fatal(err)
	}
	serverClock.Advance(11 * time.Minute)
	if _, err := c.TraceWaybill(ctx, appID, sampleTrace()); err != nil {
		t.Fatal(err)
	}
	var eps []string
	var codes []int
	for _, call := range srv.Calls() {
		eps, codes = append(eps, call.Endpoint), append(codes, call.Errcode)
	}
	want := []string{"token", "trace_waybill", "trace_waybill", "token", "trace_waybill"}
	if !slices.Equal(eps, want) {
		t.Fatalf("calls %v (errcodes %v), want %v", eps, codes, want)
	}
	if codes[2] != 42001 || codes[4] != 0 {
		t.Fatalf("errcodes %v, want 42001 then success", codes)
	}
}
