package tracestore_test

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/storetest"
	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/tracestore"
)

func newFakeClock() *testclock.Clock {
	return testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
}

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, ttl time.Duration) storetest.Env {
		clock := newFakeClock()
		s := tracestore.NewMemory(tracestore.MemoryConfig{TTL: ttl, Now: clock.Now})
		return storetest.Env{
			Open:       func() tracestore.Store { return s },
			Advance:    clock.Advance,
			ExactClock: true,
		}
	})
}

func key(waybillID string) tracestore.Key {
	return tracestore.Key{AppID: "wx0001", WaybillID: waybillID}
}

// present reports which of the waybill ids have a record. Get touches, so
// tests call it only where the order no longer matters.
func present(t *testing.T, s tracestore.Store, ids ...string) []string {
	t.Helper()
	var got []string
	for _, id := range ids {
		_, ok, err := s.Get(context.Background(), key(id))
		require.NoError(t, err)
		if ok {
			got = append(got, id)
		}
	}
	return got
}

func TestMemoryStoreEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	s := tracestore.NewMemory(tracestore.MemoryConfig{MaxEntries: 3})
	put := func(id string) {
		t.Helper()
		require.NoError(t, s.Put(ctx, key(id), tracestore.Record{WaybillToken: "tok-" + id}))
	}
	touch := func(id string) {
		t.Helper()
		_, ok, err := s.Get(ctx, key(id))
		require.NoError(t, err)
		require.True(t, ok, id)
	}

	put("a")
	put("b")
	put("c") // recency: c b a
	assert.Equal(t, 3, s.Len())
	touch("a") // a c b
	put("d")   // d a c, b evicted
	assert.Equal(t, 3, s.Len())
	// A miss changes no order.
	assert.Empty(t, present(t, s, "b"), "b, the least recently used, should be gone")
	put("c") // an update counts as a use: c d a
	put("e") // e c d, a evicted
	assert.Empty(t, present(t, s, "a"), "a should be gone")
	put("f") // f e c, d evicted
	assert.Equal(t, []string{"c", "e", "f"}, present(t, s, "a", "b", "c", "d", "e", "f"))
	assert.Equal(t, 3, s.Len())
}

func TestMemoryStoreExpiresByPutTimeNotUse(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := tracestore.NewMemory(tracestore.MemoryConfig{TTL: time.Hour, Now: clock.Now})
	put := func(id string) {
		t.Helper()
		require.NoError(t, s.Put(ctx, key(id), tracestore.Record{WaybillToken: "tok-" + id}))
	}

	put("a")
	clock.Advance(20 * time.Minute)
	put("b")
	clock.Advance(20 * time.Minute)
	put("c")
	assert.Equal(t, []string{"a", "b", "c"}, present(t, s, "a", "b", "c")) // reads do not extend
	clock.Advance(20 * time.Minute)                                        // a is 60 minutes old
	assert.Equal(t, 2, s.Len(), "an expired record is dropped without being read")
	put("b")                        // restarts b at minute 60
	clock.Advance(30 * time.Minute) // minute 90
	assert.Equal(t, []string{"b", "c"}, present(t, s, "a", "b", "c"))
	clock.Advance(10 * time.Minute) // minute 100: c, put at 40, is gone
	assert.Equal(t, []string{"b"}, present(t, s, "a", "b", "c"))
	clock.Advance(20 * time.Minute) // minute 120
	assert.Empty(t, present(t, s, "a", "b", "c"))
	assert.Equal(t, 0, s.Len())
}

func TestMemoryStoreDefaults(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := tracestore.NewMemory(tracestore.MemoryConfig{Now: clock.Now})
	require.NoError(t, s.Put(ctx, key("a"), tracestore.Record{WaybillToken: "t"}))
	clock.Advance(tracestore.DefaultTTL - time.Second)
	assert.Equal(t, []string{"a"}, present(t, s, "a"))
	clock.Advance(time.Second)
	assert.Empty(t, present(t, s, "a"))

	for i := range tracestore.DefaultMemoryEntries + 10 {
		require.NoError(t, s.Put(ctx, key(fmt.Sprint(i)), tracestore.Record{WaybillToken: "t"}))
	}
	assert.Equal(t, tracestore.DefaultMemoryEntries, s.Len())
	assert.Empty(t, present(t, s, "0", "9"))
	assert.Equal(t, []string{"10"}, present(t, s, "10"))
}

func TestMemoryStoreConfigValidate(t *testing.T) {
	assert.NoError(t, (&tracestore.MemoryConfig{}).Validate())
	err := (&tracestore.MemoryConfig{MaxEntries: -1, TTL: -time.Second}).Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MaxEntries")
	assert.Contains(t, err.Error(), "TTL")
	assert.PanicsWithValue(t, "tracestore: memory store config: MaxEntries -1 is negative", func() {
		tracestore.NewMemory(tracestore.MemoryConfig{MaxEntries: -1})
	})
	assert.ErrorContains(t, (&tracestore.MemoryConfig{MaxEntries: math.MaxInt32 + 1}).Validate(), "above")
}

// TestMemoryStoreForever: a TTL meant as "forever" keeps records, rather
// than overflowing into the past.
func TestMemoryStoreForever(t *testing.T) {
	ctx := context.Background()
	s := tracestore.NewMemory(tracestore.MemoryConfig{TTL: math.MaxInt64})
	require.NoError(t, s.Put(ctx, key("a"), tracestore.Record{WaybillToken: "t"}))
	_, ok, err := s.Get(ctx, key("a"))
	require.NoError(t, err)
	assert.True(t, ok)
}

// Claims that nobody released are forgotten as claims come and go; the
// forgetting must spare the live ones.
func TestMemoryStoreForgetsOnlyExpiredClaims(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := tracestore.NewMemory(tracestore.MemoryConfig{Now: clock.Now})
	claim := func(id string, ttl time.Duration) bool {
		t.Helper()
		_, ok, err := s.Claim(ctx, key(id), "", ttl)
		require.NoError(t, err)
		return ok
	}
	const n = 1000
	for i := range n {
		require.True(t, claim(fmt.Sprint("crashed-", i), time.Minute))
	}
	clock.Advance(time.Minute)
	for i := range n {
		require.True(t, claim(fmt.Sprint("live-", i), time.Hour))
	}
	for i := range n {
		assert.False(t, claim(fmt.Sprint("live-", i), time.Hour), "live claim %d was forgotten", i)
		assert.True(t, claim(fmt.Sprint("crashed-", i), time.Hour), "expired claim %d still holds", i)
	}
}

func BenchmarkMemoryStoreGetPut(b *testing.B) {
	ctx := context.Background()
	const n = 100_000
	keys, rec := storetest.Keys(2*n), storetest.Record
	full := func(b *testing.B) *tracestore.Memory {
		s := tracestore.NewMemory(tracestore.MemoryConfig{MaxEntries: n})
		for _, k := range keys[:n] {
			if err := s.Put(ctx, k, rec); err != nil {
				b.Fatal(err)
			}
		}
		return s
	}
	b.Run("GetHit", func(b *testing.B) {
		b.ReportAllocs()
		s := full(b)
		i := 0
		for b.Loop() {
			if _, ok, err := s.Get(ctx, keys[i%n]); !ok || err != nil {
				b.Fatal(ok, err)
			}
			i++
		}
	})
	b.Run("PutEvicting", func(b *testing.B) {
		b.ReportAllocs()
		s := full(b)
		i := 0
		for b.Loop() {
			if err := s.Put(ctx, keys[i%len(keys)], rec); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Parallel90Get10Put", func(b *testing.B) {
		b.ReportAllocs()
		s := full(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				k := keys[i%len(keys)]
				if i%10 == 0 {
					if err := s.Put(ctx, k, rec); err != nil {
						b.Error(err)
						return
					}
				} else if _, _, err := s.Get(ctx, k); err != nil {
					b.Error(err)
					return
				}
				i += 7
			}
		})
	})
}

// BenchmarkMemoryStoreFootprint: the heap a full store holds per record,
// with keys and tokens shaped like WeChat's, each string its own allocation
// as decoding makes them.
func BenchmarkMemoryStoreFootprint(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := tracestore.NewMemory(tracestore.MemoryConfig{MaxEntries: n})
		for i := range n {
			k := tracestore.Key{AppID: fmt.Sprintf("wx%016x", i%100), WaybillID: fmt.Sprintf("SF%012d", i), TransID: fmt.Sprintf("42000012342026%014d", i)}
			rec := tracestore.Record{WaybillToken: fmt.Sprintf("o_ARWHaxIxzWHmdui-AIw9KBr8qNnbmc08V0K%08d", i), GoodsHash: fmt.Sprintf("%032x", i), TracedAt: time.Now()}
			require.NoError(b, s.Put(ctx, k, rec))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/record")
		runtime.KeepAlive(s)
	}
}

// TestMemoryStoreKeepsAnyGoodsHash: fingerprints are packed into the entry,
// any other goods hash is kept as it came.
func TestMemoryStoreKeepsAnyGoodsHash(t *testing.T) {
	ctx := context.Background()
	s := tracestore.NewMemory(tracestore.MemoryConfig{})
	for i, g := range []string{"0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF", "short", "", "0123456789abcdef0123456789abcdeg"} {
		k := key(fmt.Sprintf("SF%d", i))
		require.NoError(t, s.Put(ctx, k, tracestore.Record{WaybillToken: "t", GoodsHash: g}))
		got, ok, err := s.Get(ctx, k)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, g, got.GoodsHash)
	}
}
