package ratelimit

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/testredis"
)

func newRedisLimiter(t *testing.T, cfg Config) (*Limiter, *redis.Client, string) {
	t.Helper()
	c, prefix := testredis.Client(t), testredis.Prefix(t)
	cfg.Store = NewRedisStore(c, prefix)
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, c, prefix
}

// TestRedisKeys checks the documented key layout and that every key expires:
// window keys five minutes after the window ends, the rate key when its
// bucket is full again.
func TestRedisKeys(t *testing.T) {
	ctx := context.Background()
	l, c, p := newRedisLimiter(t, Config{Defaults: Limits{AppDaily: 10, UserDaily: 5, Rate: 10, Burst: 5}})
	now := cst("2026-03-14 23:00:00")
	if d, err := l.Allow(ctx, "wxA", "u1", now); err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); err != nil {
		t.Fatal(err)
	}
	window := time.Hour + windowGrace
	for _, k := range []struct {
		key, value string
		ttl        time.Duration
	}{
		{p + "{wxA}:20260314:app", "1", window},
		{p + "{wxA}:20260314:u:u1", "1", window},
		{p + "{wxA}:20260314:exhausted", "1", window},
		{p + "{wxA}:tat", strconv.FormatInt(now.Add(100*time.Millisecond).UnixMicro(), 10), 101 * time.Millisecond},
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

func TestRedisNoOpenIDNoUserKey(t *testing.T) {
	ctx := context.Background()
	l, c, p := newRedisLimiter(t, Config{})
	now := cst("2026-03-14 10:00:00")
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

// TestRedisScriptsReloaded: after SCRIPT FLUSH (a restarted or failed-over
// server), EVALSHA fails with NOSCRIPT and the store falls back to EVAL.
func TestRedisScriptsReloaded(t *testing.T) {
	ctx := context.Background()
	l, c, _ := newRedisLimiter(t, Config{Defaults: Limits{AppDaily: 2, Rate: -1}})
	now := cst("2026-03-14 10:00:00")
	for i, want := range []bool{true, true, true, false} {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		d, err := l.Allow(ctx, "wxA", "u1", now)
		if err != nil || d.Allowed != want {
			t.Fatalf("call %d after SCRIPT FLUSH: %+v, %v; want allowed %v", i, d, err, want)
		}
		if i == 0 {
			if err := c.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if err := l.Refund(ctx, d); err != nil {
				t.Fatalf("Refund after SCRIPT FLUSH: %v", err)
			}
			if err := c.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if err := l.ExhaustApp(ctx, "wxB", now); err != nil {
				t.Fatalf("ExhaustApp after SCRIPT FLUSH: %v", err)
			}
		}
	}
}

func TestRedisErrors(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: testredis.Addr(t)})
	l, err := New(Config{Store: NewRedisStore(c, testredis.Prefix(t))})
	if err != nil {
		t.Fatal(err)
	}
	now := cst("2026-03-14 10:00:00")
	ok, err := l.Allow(ctx, "wxA", "u1", now)
	if err != nil || !ok.Allowed {
		t.Fatalf("Allow = %+v, %v", ok, err)
	}
	_ = c.Close()
	d, err := l.Allow(ctx, "wxA", "u1", now)
	if !errors.Is(err, redis.ErrClosed) || d.Allowed {
		t.Errorf("Allow on a closed client = %+v, %v; want a denial and redis.ErrClosed", d, err)
	}
	if err := l.Refund(ctx, ok); !errors.Is(err, redis.ErrClosed) {
		t.Errorf("Refund on a closed client = %v, want redis.ErrClosed", err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); !errors.Is(err, redis.ErrClosed) {
		t.Errorf("ExhaustApp on a closed client = %v, want redis.ErrClosed", err)
	}
}
