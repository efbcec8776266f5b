package redisstore_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/redisstore"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// storeContract is what every wechat.TokenStore must do. open returns a
// handle on one namespace; handles share data and locks, as processes
// sharing one Redis do.
func storeContract(t *testing.T, open func() wechat.TokenStore) {
	ctx := context.Background()
	a, b := open(), open()

	t.Run("missing", func(t *testing.T) {
		if _, ok, err := a.Load(ctx, "nothing"); ok || err != nil {
			t.Fatalf("Load(missing) = %v, %v", ok, err)
		}
	})
	t.Run("save and load across handles", func(t *testing.T) {
		exp := time.Date(2026, 3, 1, 11, 0, 0, 123_000_000, time.UTC)
		for _, tok := range []wechat.Token{
			{Value: "at-西湖<&>", Expiry: exp, Lifetime: 20 * time.Second},
			{Value: "refresh-never-expires"},
		} {
			if err := a.Save(ctx, "k", tok); err != nil {
				t.Fatal(err)
			}
			got, ok, err := b.Load(ctx, "k")
			if err != nil || !ok || got.Value != tok.Value || !got.Expiry.Equal(tok.Expiry) || got.Expiry.IsZero() != tok.Expiry.IsZero() ||
				got.Lifetime != tok.Lifetime {
				t.Fatalf("Load = %+v (%q), %v, %v; want %+v", got, got.Value, ok, err, tok)
			}
		}
	})
	t.Run("lock is exclusive across handles", func(t *testing.T) {
		unlock, ok, err := a.TryLock(ctx, "lock:x", time.Minute)
		if err != nil || !ok {
			t.Fatalf("first TryLock: %v, %v", ok, err)
		}
		if _, ok, err := b.TryLock(ctx, "lock:x", time.Minute); ok || err != nil {
			t.Fatalf("second TryLock: %v, %v", ok, err)
		}
		if err := unlock(ctx); err != nil {
			t.Fatal(err)
		}
		unlock2, ok, err := b.TryLock(ctx, "lock:x", time.Minute)
		if err != nil || !ok {
			t.Fatalf("TryLock after unlock: %v, %v", ok, err)
		}
		_ = unlock2(ctx)
	})
	t.Run("expired lock passes on; the old owner cannot release the new", func(t *testing.T) {
		stale, ok, err := a.TryLock(ctx, "lock:y", 50*time.Millisecond)
		if err != nil || !ok {
			t.Fatalf("TryLock: %v, %v", ok, err)
		}
		var fresh func(context.Context) error
		deadline := time.Now().Add(10 * time.Second)
		for fresh == nil {
			if time.Now().After(deadline) {
				t.Fatal("lock never expired")
			}
			time.Sleep(10 * time.Millisecond)
			fresh, _, err = b.TryLock(ctx, "lock:y", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := stale(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := a.TryLock(ctx, "lock:y", time.Minute); ok {
			t.Fatal("the expired owner's unlock released the new owner's lock")
		}
		_ = fresh(ctx)
	})
	t.Run("one winner among concurrent lockers", func(t *testing.T) {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			h := open()
			wg.Go(func() {
				if _, ok, err := h.TryLock(ctx, "lock:z", time.Minute); err == nil && ok {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d winners, want 1", wins.Load())
		}
	})
}

func TestMemoryStoreContract(t *testing.T) {
	s := new(wechat.MemoryStore)
	storeContract(t, func() wechat.TokenStore { return s })
}

func TestRedisStoreContract(t *testing.T) {
	prefix := testredis.Prefix(t)
	storeContract(t, func() wechat.TokenStore {
		return redisstore.New(testredis.Client(t), redisstore.Options{Prefix: prefix})
	})
}

func TestStringShowsNoToken(t *testing.T) {
	s := redisstore.New(testredis.Client(t), redisstore.Options{Prefix: "p:"})
	if got := fmt.Sprintf("%v %#v", s, s); got != "redisstore.Store{p:} redisstore.Store{p:}" {
		t.Fatalf("got %q", got)
	}
}

// TestSeparateClientsShareOneTokenOnRedis runs clients that share nothing but
// Redis (their own Redis connection, store, token source and wechat.Client,
// as separate processes would) against cgi-bin/token: between them they make
// exactly one fetch per token lifetime and never meet 40001.
func TestSeparateClientsShareOneTokenOnRedis(t *testing.T) {
	const appid, secret = "wx0123456789abcdef", "app-secret-0123"
	clk := testclock.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	srv := wechattest.NewServer(wechattest.Config{TokenTTL: 10 * time.Minute, Now: clk.Now,
		AppDailyQuota: -1, OpenIDDailyQuota: -1})
	t.Cleanup(srv.Close)
	srv.AddApp(appid, secret)
	prefix := testredis.Prefix(t)

	const processes, phases, perPhase = 5, 30, 3
	clients := make([]*wechat.Client, processes)
	for i := range clients {
		src, err := wechat.NewAccessTokenSource(wechat.AccessTokenConfig{BaseURL: srv.URL,
			Secrets: wechat.StaticSecrets{appid: secret}, Now: clk.Now,
			Store: redisstore.New(testredis.Client(t), redisstore.Options{Prefix: prefix})})
		if err != nil {
			t.Fatal(err)
		}
		if clients[i], err = wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: src}); err != nil {
			t.Fatal(err)
		}
	}
	req := &wechat.TraceWaybillRequest{OpenID: "o-1", ReceiverPhone: "13800000000", WaybillID: "SF1",
		GoodsInfo: wechat.GoodsInfo{DetailList: []wechat.Goods{{GoodsName: "茶", GoodsImgURL: "https://img.example/t.png"}}}}
	// Phases one minute apart: the clock never moves while a call is on the
	// wire, so the count of lifetimes is exact. A token fetched at t is
	// renewed at t+9m (wechat.DefaultEarly before its 10m expiry).
	for p := range phases {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() {
				for range perPhase {
					if _, err := c.TraceWaybill(context.Background(), appid, req); err != nil {
						t.Errorf("phase %d: %v", p, err)
					}
				}
			})
		}
		wg.Wait()
		clk.Advance(time.Minute)
	}
	if got, want := len(srv.CallsTo("token")), (phases-1)/9+1; got != want {
		t.Errorf("%d token fetches, want %d (one per lifetime)", got, want)
	}
	for _, c := range srv.CallsTo("trace_waybill") {
		if c.Errcode != 0 {
			t.Fatalf("a call met errcode %d", c.Errcode)
		}
	}
	if got, want := len(srv.CallsTo("trace_waybill")), processes*phases*perPhase; got != want {
		t.Errorf("%d trace calls, want %d", got, want)
	}
}
