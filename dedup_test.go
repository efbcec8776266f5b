package waybill_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/internal/storetest"
)

func newFakeClock() *storetest.Clock {
	return storetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
}

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, ttl time.Duration) storetest.Env {
		clock := newFakeClock()
		s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{TTL: ttl, Now: clock.Now})
		return storetest.Env{
			Open:       func() waybill.TraceStore { return s },
			Advance:    clock.Advance,
			ExactClock: true,
		}
	})
}

func key(waybillID string) waybill.DedupKey {
	return waybill.DedupKey{AppID: "wx0001", WaybillID: waybillID}
}

// present reports which of the waybill ids have a record. Get touches, so
// tests call it only where the order no longer matters.
func present(t *testing.T, s waybill.TraceStore, ids ...string) []string {
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
	s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{MaxEntries: 3})
	put := func(id string) {
		t.Helper()
		require.NoError(t, s.Put(ctx, key(id), waybill.TraceRecord{WaybillToken: "tok-" + id}))
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
	s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{TTL: time.Hour, Now: clock.Now})
	put := func(id string) {
		t.Helper()
		require.NoError(t, s.Put(ctx, key(id), waybill.TraceRecord{WaybillToken: "tok-" + id}))
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
	s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{Now: clock.Now})
	require.NoError(t, s.Put(ctx, key("a"), waybill.TraceRecord{WaybillToken: "t"}))
	clock.Advance(waybill.DefaultTraceTTL - time.Second)
	assert.Equal(t, []string{"a"}, present(t, s, "a"))
	clock.Advance(time.Second)
	assert.Empty(t, present(t, s, "a"))

	for i := range waybill.DefaultMemoryTraceStoreEntries + 10 {
		require.NoError(t, s.Put(ctx, key(fmt.Sprint(i)), waybill.TraceRecord{WaybillToken: "t"}))
	}
	assert.Equal(t, waybill.DefaultMemoryTraceStoreEntries, s.Len())
	assert.Empty(t, present(t, s, "0", "9"))
	assert.Equal(t, []string{"10"}, present(t, s, "10"))
}

func TestMemoryStoreConfigValidate(t *testing.T) {
	assert.NoError(t, (&waybill.MemoryTraceStoreConfig{}).Validate())
	err := (&waybill.MemoryTraceStoreConfig{MaxEntries: -1, TTL: -time.Second}).Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MaxEntries")
	assert.Contains(t, err.Error(), "TTL")
	assert.PanicsWithValue(t, "waybill: memory store config: MaxEntries -1 is negative", func() {
		waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{MaxEntries: -1})
	})
}

// Claims that nobody released are forgotten as claims come and go; the
// forgetting must spare the live ones.
func TestMemoryStoreForgetsOnlyExpiredClaims(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{Now: clock.Now})
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

func TestDedupKeyString(t *testing.T) {
	cases := []struct {
		key  waybill.DedupKey
		want string
	}{
		{waybill.DedupKey{AppID: "wx0001", WaybillID: "SF1001", TransID: "4200001"}, "wx0001:SF1001:4200001"},
		{waybill.DedupKey{AppID: "wx0001", WaybillID: "SF1001"}, "wx0001:SF1001:"},
		{waybill.DedupKey{AppID: "a:b", WaybillID: "c"}, "a%3Ab:c:"},
		{waybill.DedupKey{AppID: "a", WaybillID: "b:c"}, "a:b%3Ac:"},
		{waybill.DedupKey{AppID: "a%3Ab", WaybillID: "c"}, "a%253Ab:c:"},
		{waybill.DedupKey{TransID: "4200:1%"}, "::4200%3A1%25"},
		{waybill.DedupKey{}, "::"},
	}
	seen := map[string]waybill.DedupKey{}
	for _, c := range cases {
		got := c.key.String()
		assert.Equal(t, c.want, got, "%#v", c.key)
		assert.Equal(t, 2, strings.Count(got, ":"), "separators in %q", got)
		if prev, dup := seen[got]; dup {
			t.Errorf("%#v and %#v share %q", prev, c.key, got)
		}
		seen[got] = c.key
	}
}

func FuzzDedupKeyString(f *testing.F) {
	f.Add("a:b", "c", "", "a", "b:c", "")
	f.Add("%", "3A", "", "%3A", "", "")
	f.Fuzz(func(t *testing.T, a1, w1, t1, a2, w2, t2 string) {
		k1 := waybill.DedupKey{AppID: a1, WaybillID: w1, TransID: t1}
		k2 := waybill.DedupKey{AppID: a2, WaybillID: w2, TransID: t2}
		if k1 != k2 && k1.String() == k2.String() {
			t.Fatalf("%#v and %#v share %q", k1, k2, k1.String())
		}
	})
}

func TestGoodsFingerprint(t *testing.T) {
	goods := []waybill.Goods{
		{Name: "咖啡豆", ImageURL: "https://img.example.com/1.jpg", Description: "500g"},
		{Name: "滤纸", ImageURL: "https://img.example.com/2.jpg"},
	}
	fp := waybill.GoodsFingerprint(goods)
	// Stores keep fingerprints across releases: this value must never change.
	// It is SHA-256 over "<byte length>:<field>" for name, image, description
	// of each line, cut to 32 hex digits (computed outside Go).
	assert.Equal(t, "aab50c1bfa782a9bde8356fc3ed2c348", fp)
	assert.Len(t, waybill.GoodsFingerprint(nil), 32)

	copied := append([]waybill.Goods(nil), goods...)
	assert.Equal(t, fp, waybill.GoodsFingerprint(copied), "same list, new slice")

	changed := map[string][]waybill.Goods{
		"order":               {goods[1], goods[0]},
		"one line dropped":    goods[:1],
		"name":                {{Name: "咖啡粉", ImageURL: goods[0].ImageURL, Description: "500g"}, goods[1]},
		"image":               {{Name: goods[0].Name, ImageURL: "https://img.example.com/3.jpg", Description: "500g"}, goods[1]},
		"description":         {{Name: goods[0].Name, ImageURL: goods[0].ImageURL, Description: "1kg"}, goods[1]},
		"text between lines":  {{Name: goods[0].Name, ImageURL: goods[0].ImageURL, Description: "500g滤纸"}, {ImageURL: goods[1].ImageURL}},
		"text between fields": {{Name: goods[0].Name + "https://img.example.com/1.jpg", Description: "500g"}, goods[1]},
		"empty line added":    append(append([]waybill.Goods(nil), goods...), waybill.Goods{}),
	}
	seen := map[string]string{fp: "original"}
	for name, g := range changed {
		got := waybill.GoodsFingerprint(g)
		if prev, dup := seen[got]; dup {
			t.Errorf("%s has the fingerprint of %s", name, prev)
		}
		seen[got] = name
	}
}

func BenchmarkMemoryStoreGetPut(b *testing.B) {
	ctx := context.Background()
	const n = 100_000
	keys, rec := storetest.Keys(2*n), storetest.Record
	full := func(b *testing.B) *waybill.MemoryTraceStore {
		s := waybill.NewMemoryTraceStore(waybill.MemoryTraceStoreConfig{MaxEntries: n})
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
