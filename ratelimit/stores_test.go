package ratelimit

import (
	"testing"
	"time"
	_ "time/tzdata" // the DST tests need America/New_York on any machine

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/testredis"
)

// storeKind makes the stores that one test runs against. Every test that
// takes a storeKind runs unchanged on memory and on a real Redis.
type storeKind struct {
	name string
	// shared returns k stores over the same counters: one MemoryStore k
	// times, or k RedisStores each with its own client (its own
	// connections, as separate processes would have) and one key prefix.
	shared func(t testing.TB, k int) []Store
}

var storeKinds = []storeKind{
	{"memory", func(_ testing.TB, k int) []Store {
		s := NewMemoryStore()
		stores := make([]Store, k)
		for i := range stores {
			stores[i] = s
		}
		return stores
	}},
	{"redis", func(t testing.TB, k int) []Store {
		addr, prefix := testredis.Addr(t), testredis.Prefix(t)
		stores := make([]Store, k)
		for i := range stores {
			c := redis.NewClient(&redis.Options{Addr: addr})
			t.Cleanup(func() { _ = c.Close() })
			stores[i] = NewRedisStore(c, prefix)
		}
		return stores
	}},
}

func (k storeKind) one(t testing.TB) Store { return k.shared(t, 1)[0] }

// forEachStore runs f as a subtest per store kind.
func forEachStore(t *testing.T, f func(t *testing.T, k storeKind)) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { f(t, k) })
	}
}

func mustLoad(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}

var (
	shanghai = mustLoad("Asia/Shanghai")
	newYork  = mustLoad("America/New_York")
)

// at parses a wall-clock time in loc.
func at(loc *time.Location, s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", s, loc)
	if err != nil {
		panic(err)
	}
	return t
}

func cst(s string) time.Time { return at(shanghai, s) }
