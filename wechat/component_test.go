package wechat

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

const (
	componentID = "wxcomponent000001"
	merchantID  = "wxmerchant0000001"
)

// componentSandbox starts a sandbox knowing platform componentID (ticket
// "ticket-0001") and its authorizer merchantID (refresh token "refresh-0001").
func componentSandbox(t *testing.T, clock *testclock.Clock) *wechattest.Server {
	t.Helper()
	srv := wechattest.NewServer(wechattest.Config{Now: clock.Now})
	t.Cleanup(srv.Close)
	srv.AddComponent(componentID, "component-secret-1", "ticket-0001")
	srv.AddAuthorizer(componentID, merchantID, "refresh-0001")
	return srv
}

func newComponent(t *testing.T, base string, clock *testclock.Clock, store TokenStore) *ComponentTokenSource {
	t.Helper()
	src, err := NewComponentTokenSource(ComponentConfig{BaseURL: base, ComponentAppID: "wxcomponent000001",
		ComponentSecret: "component-secret-1", Store: store, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestComponentRotatesAndSavesRefreshToken(t *testing.T) {
	clock := newFakeClock()
	srv := componentSandbox(t, clock)
	const comp, merchant = componentID, merchantID
	store := new(MemoryStore)
	src := newComponent(t, srv.URL, clock, store)
	ctx := context.Background()

	if _, err := src.Token(ctx, merchant); !errors.Is(err, ErrNoRefreshToken) || ClassOf(err) != ClassConfiguration {
		t.Fatalf("without refresh token: %v", err)
	}
	if err := src.SetRefreshToken(ctx, merchant, "refresh-0001"); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Token(ctx, merchant); !errors.Is(err, ErrNoVerifyTicket) || ClassOf(err) != ClassConfiguration {
		t.Fatalf("without ticket: %v", err)
	}
	if err := src.SetVerifyTicket(ctx, "ticket-0001"); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, srv.URL, src)
	for gen := range 3 {
		if _, err := c.TraceWaybill(ctx, merchant, sampleTrace()); err != nil {
			t.Fatalf("generation %d: %v", gen, err)
		}
		saved, ok, _ := store.Load(ctx, "authorizer_refresh_token:"+comp+":"+merchant)
		if !ok || saved.Value != srv.RefreshToken(merchant) || saved.Value == "refresh-0001" {
			t.Fatalf("generation %d: saved refresh token differs from the sandbox's current one", gen)
		}
		// Past the token's life and the old refresh token's grace: only the
		// saved, rotated refresh token still works.
		clock.Advance(2*time.Hour + 10*time.Minute)
		if err := src.SetVerifyTicket(ctx, "ticket-0001"); err != nil { // pushed every 10 min
			t.Fatal(err)
		}
	}
	if n := len(srv.CallsTo("api_authorizer_token")); n != 3 {
		t.Fatalf("%d authorizer fetches, want 3", n)
	}
	if n := len(srv.CallsTo("api_component_token")); n != 3 {
		t.Fatalf("%d component fetches, want 3", n)
	}
	ct, err := src.ComponentAccessToken(ctx)
	if err != nil || ct == "" {
		t.Fatalf("ComponentAccessToken: %q, %v", ct, err)
	}
}

func TestComponentRefreshTokenRevoked(t *testing.T) {
	clock := newFakeClock()
	srv := componentSandbox(t, clock)
	src := newComponent(t, srv.URL, clock, nil)
	ctx := context.Background()
	_ = src.SetVerifyTicket(ctx, "ticket-0001")
	_ = src.SetRefreshToken(ctx, "wxmerchant0000001", "refresh-stale-or-forged")
	_, err := src.Token(ctx, "wxmerchant0000001")
	var we *Error
	if !errors.As(err, &we) || we.Code != 61023 || ClassOf(err) != ClassConfiguration {
		t.Fatalf("bad refresh token: %v", err)
	}
	if errors.Is(err, ErrNoRefreshToken) {
		t.Fatal("confused with a missing refresh token")
	}
}

func TestComponentConfigValidate(t *testing.T) {
	for name, cfg := range map[string]ComponentConfig{
		"empty":     {},
		"no secret": {ComponentAppID: "wxc"},
		"no appid":  {ComponentSecret: "s"},
		"bad early": {ComponentAppID: "wxc", ComponentSecret: "s", Early: time.Hour},
	} {
		if _, err := NewComponentTokenSource(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestComponentSeedRefreshToken: a configured refresh token is stored only
// when none is, so a restart with the original one in its configuration
// never overwrites the rotated one; and the seed waits for a fetch holding
// the merchant's lock rather than racing it.
func TestComponentSeedRefreshToken(t *testing.T) {
	clock := newFakeClock()
	srv := componentSandbox(t, clock)
	store := new(MemoryStore)
	src := newComponent(t, srv.URL, clock, store)
	ctx := context.Background()

	if _, err := src.VerifyTicketExpiry(ctx); !errors.Is(err, ErrNoVerifyTicket) {
		t.Fatalf("VerifyTicketExpiry without a ticket: %v", err)
	}
	if err := src.SetVerifyTicket(ctx, "ticket-0001"); err != nil {
		t.Fatal(err)
	}
	if exp, err := src.VerifyTicketExpiry(ctx); err != nil || !exp.Equal(clock.Now().Add(VerifyTicketTTL)) {
		t.Fatalf("VerifyTicketExpiry: %v, %v", exp, err)
	}
	if stored, err := src.SeedRefreshToken(ctx, merchantID, "refresh-0001"); err != nil || !stored {
		t.Fatalf("first seed: stored %v, %v", stored, err)
	}
	if _, err := src.Token(ctx, merchantID); err != nil {
		t.Fatal(err)
	}
	rotated := srv.RefreshToken(merchantID)
	// A restart: the configuration still names the original.
	again := newComponent(t, srv.URL, clock, store)
	if stored, err := again.SeedRefreshToken(ctx, merchantID, "refresh-0001"); err != nil || stored {
		t.Fatalf("second seed: stored %v, %v", stored, err)
	}
	if saved, _, _ := store.Load(ctx, "authorizer_refresh_token:"+componentID+":"+merchantID); saved.Value != rotated {
		t.Fatal("the seed overwrote the rotated refresh token")
	}
	clock.Advance(2*time.Hour + 10*time.Minute) // the original is dead now
	if err := again.SetVerifyTicket(ctx, "ticket-0001"); err != nil {
		t.Fatal(err)
	}
	if _, err := again.Token(ctx, merchantID); err != nil {
		t.Fatalf("after the restart: %v", err)
	}

	// Another process holds the merchant's lock: the seed waits for it.
	unlock, ok, err := store.TryLock(ctx, "lock:authorizer_access_token:"+componentID+":wxother", time.Minute)
	if err != nil || !ok {
		t.Fatal("TryLock", ok, err)
	}
	done := make(chan bool)
	go func() {
		stored, err := src.SeedRefreshToken(ctx, "wxother", "refresh-other")
		done <- stored && err == nil
	}()
	select {
	case <-done:
		t.Fatal("the seed did not wait for the lock")
	case <-time.After(50 * time.Millisecond):
	}
	if err := unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if !<-done {
		t.Fatal("the seed failed once the lock was free")
	}
}

// TestComponentVerifyTicketAt: a relayed ticket keeps the age it had when
// WeChat pushed it; an expired one is refused, and an older push never
// replaces a newer one.
func TestComponentVerifyTicketAt(t *testing.T) {
	clock := newFakeClock()
	srv := componentSandbox(t, clock)
	src := newComponent(t, srv.URL, clock, new(MemoryStore))
	ctx := context.Background()
	now := clock.Now()

	if _, err := src.SetVerifyTicketAt(ctx, "ticket-old", now.Add(-VerifyTicketTTL)); err == nil {
		t.Fatal("a ticket pushed 12 h ago was stored")
	}
	if stored, err := src.SetVerifyTicketAt(ctx, "ticket-2", now.Add(-time.Hour)); err != nil || !stored {
		t.Fatalf("stored %v, %v", stored, err)
	}
	if exp, _ := src.VerifyTicketExpiry(ctx); !exp.Equal(now.Add(11 * time.Hour)) {
		t.Fatalf("expiry %v: want the push time plus 12 h", exp)
	}
	if stored, err := src.SetVerifyTicketAt(ctx, "ticket-1", now.Add(-2*time.Hour)); err != nil || stored {
		t.Fatalf("an older push: stored %v, %v", stored, err)
	}
	if stored, err := src.SetVerifyTicketAt(ctx, "ticket-2", now); err != nil || stored {
		t.Fatalf("the same ticket again: stored %v, %v (its age must not be reset)", stored, err)
	}
	if err := src.SetVerifyTicket(ctx, "ticket-3"); err != nil {
		t.Fatal(err)
	}
	if exp, _ := src.VerifyTicketExpiry(ctx); !exp.Equal(now.Add(VerifyTicketTTL)) {
		t.Fatalf("a new push: expiry %v", exp)
	}
}
