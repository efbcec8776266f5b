package wechat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// tokenServer answers the token endpoints with "at-1", "at-2", ... valid for
// lifetime, counting fetches.
func tokenServer(t *testing.T, lifetime int) *scripted {
	return newScripted(t, func(n int64, r recordedRequest) (int, any) {
		return 200, fmt.Sprintf(`{"access_token":"at-%d","expires_in":%d}`, n, lifetime)
	})
}

func newStable(t *testing.T, base string, clock *testclock.Clock, store TokenStore) *StableTokenSource {
	t.Helper()
	s, err := NewStableTokenSource(StableTokenConfig{BaseURL: base, Secrets: StaticSecrets{"wxapp": "app-secret-1"},
		Store: store, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStableTokenRequest(t *testing.T) {
	srv := tokenServer(t, 7200)
	src := newStable(t, srv.URL, newFakeClock(), nil)
	if _, err := src.Token(context.Background(), "wxapp"); err != nil {
		t.Fatal(err)
	}
	r := srv.requests()[0]
	if r.Path != "/cgi-bin/stable_token" || r.ContentType != "application/json" || r.Query != "" {
		t.Fatalf("request %+v", r)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"grant_type": "client_credential", "appid": "wxapp", "secret": "app-secret-1", "force_refresh": false}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Fatalf("body %v, want %v", body, want)
	}
}

func TestTokenCachedUntilShortlyBeforeExpiry(t *testing.T) {
	srv := tokenServer(t, 7200)
	clock := newFakeClock()
	src := newStable(t, srv.URL, clock, nil)
	ctx := context.Background()
	get := func() string {
		t.Helper()
		tok, err := src.Token(ctx, "wxapp")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if a, b := get(), get(); a != "at-1" || b != "at-1" {
		t.Fatalf("got %q, %q", a, b)
	}
	clock.Advance(7200*time.Second - DefaultEarly - time.Second)
	if tok := get(); tok != "at-1" {
		t.Fatalf("renewed too early: %q", tok)
	}
	clock.Advance(time.Second)
	if tok := get(); tok != "at-2" {
		t.Fatalf("not renewed %v before expiry: %q", DefaultEarly, tok)
	}
	if n := len(srv.requests()); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestConcurrentCallersShareOneFetch(t *testing.T) {
	release := make(chan struct{})
	srv := newScripted(t, func(n int64, r recordedRequest) (int, any) {
		<-release
		return 200, fmt.Sprintf(`{"access_token":"at-%d","expires_in":7200}`, n)
	})
	src := newStable(t, srv.URL, newFakeClock(), nil)
	var wg sync.WaitGroup
	toks := make([]string, 32)
	errs := make([]error, len(toks))
	for i := range toks {
		wg.Go(func() { toks[i], errs[i] = src.Token(context.Background(), "wxapp") })
	}
	close(release)
	wg.Wait()
	for i := range toks {
		if errs[i] != nil || toks[i] != "at-1" {
			t.Fatalf("caller %d: %q, %v", i, toks[i], errs[i])
		}
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestRefreshFetchesOnlyIfStillStale(t *testing.T) {
	srv := tokenServer(t, 7200)
	src := newStable(t, srv.URL, newFakeClock(), nil)
	ctx := context.Background()
	first, _ := src.Token(ctx, "wxapp")
	second, err := src.Refresh(ctx, "wxapp", first)
	if err != nil || second == first {
		t.Fatalf("Refresh(current) = %q, %v; want a new token", second, err)
	}
	// Another caller still holding the first token refreshes it: nothing to do.
	third, err := src.Refresh(ctx, "wxapp", first)
	if err != nil || third != second {
		t.Fatalf("Refresh(old) = %q, %v; want %q without a fetch", third, err, second)
	}
	if n := len(srv.requests()); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":40001,"errmsg":"invalid credential, secret app-secret-1 wrong"}`
	})
	src := newStable(t, srv.URL, newFakeClock(), nil)
	_, err := src.Token(context.Background(), "wxapp")
	if ClassOf(err) != ClassConfiguration {
		t.Fatalf("bad secret: class %v (%v), want configuration", ClassOf(err), err)
	}
	if strings.Contains(err.Error(), "app-secret-1") {
		t.Fatalf("error shows the secret: %v", err)
	}
	_, err = src.Token(context.Background(), "wxother")
	if !errors.Is(err, ErrUnknownAppID) {
		t.Fatalf("unknown appid: %v", err)
	}
	srv2 := newScripted(t, func(int64, recordedRequest) (int, any) { return 200, `{"errcode":0}` })
	src2 := newStable(t, srv2.URL, newFakeClock(), nil)
	if _, err := src2.Token(context.Background(), "wxapp"); err == nil {
		t.Fatal("an answer without access_token was accepted")
	}
}

func TestCallerCancellationDoesNotFailOthers(t *testing.T) {
	release := make(chan struct{})
	srv := newScripted(t, func(n int64, r recordedRequest) (int, any) {
		<-release
		return 200, `{"access_token":"at-1","expires_in":7200}`
	})
	src := newStable(t, srv.URL, newFakeClock(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := src.Token(ctx, "wxapp"); first <- err }()
	for len(srv.requests()) == 0 { // wait until the flight is on the wire
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	close(release)
	tok, err := src.Token(context.Background(), "wxapp")
	if err != nil || tok != "at-1" {
		t.Fatalf("second caller: %q, %v", tok, err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d fetches, want 1: the canceled caller's flight should have finished", n)
	}
}

func TestConfigsValidate(t *testing.T) {
	bad := map[string]StableTokenConfig{
		"no secrets": {},
		"early 5m":   {Secrets: StaticSecrets{}, Early: 5 * time.Minute},
		"neg early":  {Secrets: StaticSecrets{}, Early: -1},
		"neg lock":   {Secrets: StaticSecrets{}, LockTTL: -1},
		"bad base":   {Secrets: StaticSecrets{}, BaseURL: "x"},
	}
	for name, cfg := range bad {
		if _, err := NewStableTokenSource(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := NewAccessTokenSource(AccessTokenConfig(cfg)); err == nil {
			t.Errorf("%s: accepted by AccessTokenSource", name)
		}
	}
}

// countingStore counts reads of a shared store.
type countingStore struct {
	MemoryStore
	loads atomic.Int64
}

func (s *countingStore) Load(ctx context.Context, key string) (Token, bool, error) {
	s.loads.Add(1)
	return s.MemoryStore.Load(ctx, key)
}

func TestSharedStoreReadOncePerLifetime(t *testing.T) {
	srv := tokenServer(t, 7200)
	clock := newFakeClock()
	store := new(countingStore)
	src := newStable(t, srv.URL, clock, store)
	ctx := context.Background()
	if _, err := src.Token(ctx, "wxapp"); err != nil {
		t.Fatal(err)
	}
	after1 := store.loads.Load()
	for range 50 {
		if _, err := src.Token(ctx, "wxapp"); err != nil {
			t.Fatal(err)
		}
	}
	if n := store.loads.Load(); n != after1 {
		t.Fatalf("%d store reads for 50 cached calls, want 0", n-after1)
	}
	// Refresh always consults the store: another process may have renewed.
	if err := store.Save(ctx, "stable_token:wxapp", Token{Value: "renewed-elsewhere", Expiry: clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tok, err := src.Refresh(ctx, "wxapp", "at-1")
	if err != nil || tok != "renewed-elsewhere" {
		t.Fatalf("Refresh = %q, %v", tok, err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

// A token living less than 5*Early must not be fetched again on every call:
// the early renewal is bounded by a fifth of the lifetime WeChat reported.
func TestShortLivedTokenIsRenewedByFractionOfItsLifetime(t *testing.T) {
	clock := newFakeClock()
	srv, c := sandbox(t, wechattest.Config{TokenTTL: 20 * time.Second, AppDailyQuota: -1, OpenIDDailyQuota: -1}, clock)
	const calls = 160
	for i := range calls {
		if _, err := c.TraceWaybill(context.Background(), appID, sampleTrace()); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		clock.Advance(60 * time.Second / calls)
	}
	// Fetched at 0, 16 s, 32 s and 48 s: renewed 4 s (20 s / 5) before expiry.
	if n := len(srv.CallsTo("stable_token")); n < 3 || n > 4 {
		t.Fatalf("%d stable_token calls for %d calls over 60 s of 20 s tokens, want 3 or 4", n, calls)
	}
	for _, code := range []int{40001, 42001} {
		if n := countErrcode(srv, "trace_waybill", code); n != 0 {
			t.Fatalf("%d calls answered %d: a token was used too late", n, code)
		}
	}
}

func TestEarlyBoundKeepsLongLivedTokensAtEarly(t *testing.T) {
	srv := tokenServer(t, 600)
	clock := newFakeClock()
	src := newStable(t, srv.URL, clock, nil)
	ctx := context.Background()
	if _, err := src.Token(ctx, "wxapp"); err != nil {
		t.Fatal(err)
	}
	// A fifth of 10 min is 2 min, more than Early: Early wins.
	clock.Advance(10*time.Minute - DefaultEarly - time.Second)
	if tok, _ := src.Token(ctx, "wxapp"); tok != "at-1" {
		t.Fatalf("renewed before Early: %q", tok)
	}
	clock.Advance(time.Second)
	if tok, _ := src.Token(ctx, "wxapp"); tok != "at-2" {
		t.Fatalf("not renewed Early before expiry: %q", tok)
	}
}
