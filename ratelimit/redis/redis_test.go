package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/storetest"
	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

// redisStores makes k Stores, each with its own client (its own
// connections, as separate processes would have), under one key prefix of
// the server testredis gives; a test without that server fails.
func redisStores(t testing.TB, k int) []ratelimit.Store {
	addr, prefix := testredis.Addr(t), testredis.Prefix(t)
	stores := make([]ratelimit.Store, k)
	for i := range stores {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		t.Cleanup(func() { _ = c.Close() })
		stores[i] = NewStore(c, prefix)
	}
	return stores
}

// TestStore runs the behaviour every store shares on Redis; package
// ratelimit runs the same on MemoryStore.
func TestStore(t *testing.T) { storetest.Run(t, redisStores) }

func BenchmarkAllowRedis(b *testing.B) {
	storetest.BenchAllow(b, NewStore(testredis.Client(b), testredis.Prefix(b)))
}

func BenchmarkAllowRedisParallel(b *testing.B) {
	storetest.BenchAllowParallel(b, NewStore(testredis.Client(b), testredis.Prefix(b)))
}

func newLimiter(t *testing.T, cfg ratelimit.Config) (*ratelimit.Limiter, *goredis.Client, string) {
	t.Helper()
	c, prefix := testredis.Client(t), testredis.Prefix(t)
	cfg.Store = NewStore(c, prefix)
	l, err := ratelimit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, c, prefix
}

// TestKeys checks the documented key layout and that every key expires:
// window keys five minutes after the window ends, the rate key when its
// bucket is full again.
func TestKeys(t *testing.T) {
	ctx := context.Background()
	l, c, p := newLimiter(t, ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 10, UserDaily: 5, Rate: 10, Burst: 5}})
	now := testtime.CST("2026-03-14 23:00:00")
	if d, err := l.Allow(ctx, "wxA", "u1", now); err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); err != nil {
		t.Fatal(err)
	}
	// To the window's end, then ratelimit's grace of five minutes.
	window := time.Hour + 5*time.Minute
	for _, k := range []struct {
		key, value string
		ttl        time.Duration
	}{
		{p + "{wxA}:20260314:app", "1", window},
		{p + "{wxA}:20260314:u:u1", "1", window},
		{p + "{wxA}:20260314:exhausted", "1", window},
		{p + "{wxA}:tat", strconv.FormatInt(now.Add(100*time.Millisecond).UnixMicro(), 10), 1100 * time.Millisecond}, // a second past it
	} {
		v, err := c.Get(ctx, k.key).Result()
		if err != nil || v != k.value {
			t.Errorf("GET %s = %q, %v; want %q", k.key, v, err, k.value)
		}
		// The TTL was set from the decision's time and has been running
		// since; a minute's slack covers a slow machine.
		if ttl := c.PTTL(ctx, k.key).Val(); ttl > k.ttl || ttl < k.ttl-time.Minute {
			t.Errorf("PTTL %s = %v, want about %v", k.key, ttl, k.ttl)
		}
	}
	if n := c.Exists(ctx, p+"{wxA}:20260314:u:").Val(); n != 0 {
		t.Errorf("a key for the empty openid exists")
	}
}

func TestNoOpenIDNoUserKey(t *testing.T) {
	ctx := context.Background()
	l, c, p := newLimiter(t, ratelimit.Config{})
	now := testtime.CST("2026-03-14 10:00:00")
	d, err := l.Allow(ctx, "wxA", "", now)
	if err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if err := l.Refund(ctx, d); err != nil {
		t.Fatal(err)
	}
	keys, err := c.Keys(ctx, p+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Errorf("keys %v, want the app count and the rate state only", keys)
	}
	if v := c.Get(ctx, p+"{wxA}:20260314:app").Val(); v != "0" {
		t.Errorf("app count after refund %q, want 0", v)
	}
}

// forgetfulServer is a client hook that makes the next EVALSHA name a
// script the server does not have, as after a restart or failover, without
// flushing the script cache that other tests on the same server use.
type forgetfulServer struct {
	forget        atomic.Bool
	evalsha, eval atomic.Int32
}

func (h *forgetfulServer) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h *forgetfulServer) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

func (h *forgetfulServer) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		switch args := cmd.Args(); strings.ToLower(fmt.Sprint(args[0])) {
		case "evalsha":
			h.evalsha.Add(1)
			if h.forget.Swap(false) {
				args[1] = strings.Repeat("0", 40)
			}
		case "eval":
			h.eval.Add(1)
		}
		return next(ctx, cmd)
	}
}

// TestScriptsFallBackToEval: when EVALSHA answers NOSCRIPT, each
// script runs with EVAL and the operation still happens.
func TestScriptsFallBackToEval(t *testing.T) {
	ctx := context.Background()
	c := testredis.Client(t)
	h := &forgetfulServer{}
	c.AddHook(h)
	l, err := ratelimit.New(ratelimit.Config{Store: NewStore(c, testredis.Prefix(t)), Defaults: ratelimit.Limits{AppDaily: 2, Rate: -1}})
	if err != nil {
		t.Fatal(err)
	}
	now := testtime.CST("2026-03-14 10:00:00")
	forgotten := func(what string, op func() error) {
		t.Helper()
		h.forget.Store(true)
		sha, eval := h.evalsha.Load(), h.eval.Load()
		if err := op(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if h.evalsha.Load() != sha+1 || h.eval.Load() != eval+1 {
			t.Errorf("%s: %d EVALSHA and %d EVAL, want one of each", what, h.evalsha.Load()-sha, h.eval.Load()-eval)
		}
	}
	var d ratelimit.Decision
	forgotten("Allow", func() (err error) { d, err = l.Allow(ctx, "wxA", "u1", now); return err })
	forgotten("Refund", func() error { return l.Refund(ctx, d) })
	for i, want := range []bool{true, true, false} {
		forgotten("Allow", func() (err error) { d, err = l.Allow(ctx, "wxA", "u1", now); return err })
		if d.Allowed != want {
			t.Errorf("call %d after the refund: allowed %v, want %v", i, d.Allowed, want)
		}
	}
	forgotten("ExhaustApp", func() error { return l.ExhaustApp(ctx, "wxB", now) })
	if d, err := l.Allow(ctx, "wxB", "u1", now); err != nil || d.Allowed || d.Reason != ratelimit.ReasonAppDaily {
		t.Errorf("wxB after ExhaustApp: %+v, %v; want an app_daily denial", d, err)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	c := goredis.NewClient(&goredis.Options{Addr: testredis.Addr(t)})
	l, err := ratelimit.New(ratelimit.Config{Store: NewStore(c, testredis.Prefix(t))})
	if err != nil {
		t.Fatal(err)
	}
	now := testtime.CST("2026-03-14 10:00:00")
	ok, err := l.Allow(ctx, "wxA", "u1", now)
	if err != nil || !ok.Allowed {
		t.Fatalf("Allow = %+v, %v", ok, err)
	}
	_ = c.Close()
	d, err := l.Allow(ctx, "wxA", "u1", now)
	if !errors.Is(err, goredis.ErrClosed) || d.Allowed {
		t.Errorf("Allow on a closed client = %+v, %v; want a denial and goredis.ErrClosed", d, err)
	}
	if err := l.Refund(ctx, ok); !errors.Is(err, goredis.ErrClosed) {
		t.Errorf("Refund on a closed client = %v, want goredis.ErrClosed", err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); !errors.Is(err, goredis.ErrClosed) {
		t.Errorf("ExhaustApp on a closed client = %v, want goredis.ErrClosed", err)
	}
}

func TestNewStoreDefaultKeyPrefix(t *testing.T) {
	for prefix, want := range map[string]string{"": DefaultKeyPrefix, "p:": "p:"} {
		if got := NewStore(nil, prefix).appKey("wxA"); got != want+"{wxA}:" {
			t.Errorf("NewStore(c, %q): appid key prefix %q, want %q", prefix, got, want+"{wxA}:")
		}
	}
}
