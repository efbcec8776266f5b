package testredis

import (
	"context"
	"testing"
)

func TestAddrStartsOneServer(t *testing.T) {
	a, b := Addr(t), Addr(t)
	if a == "" || a != b {
		t.Fatalf("Addr = %q then %q; want one non-empty address", a, b)
	}
}

func TestPrefixIsolatesAndCleansUp(t *testing.T) {
	ctx := context.Background()
	c := Client(t)
	var p1, p2 string
	t.Run("writer", func(t *testing.T) {
		p1, p2 = Prefix(t), Prefix(t)
		if p1 == p2 {
			t.Fatalf("two Prefix calls gave %q", p1)
		}
		for _, k := range []string{p1 + "a", p1 + "b", p2 + "a"} {
			if err := c.Set(ctx, k, "1", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.Exists(ctx, p1+"a", p1+"b", p2+"a").Val(); n != 3 {
			t.Fatalf("Exists = %d, want 3", n)
		}
	})
	// The subtest's cleanups have run.
	if n := c.Exists(ctx, p1+"a", p1+"b", p2+"a").Val(); n != 0 {
		t.Fatalf("after cleanup Exists = %d, want 0", n)
	}
}

func TestResolvePrefersREDIS_ADDR(t *testing.T) {
	t.Setenv("REDIS_ADDR", "127.0.0.1:1")
	if a, err := resolve(); err != nil || a != "127.0.0.1:1" {
		t.Fatalf("resolve() = %q, %v; want REDIS_ADDR", a, err)
	}
}
