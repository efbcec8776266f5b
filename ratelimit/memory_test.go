package ratelimit

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

// TestMemoryStoreDropsEndedWindows: a window's openid counters go once a
// decision comes windowGrace after its end, and an idle appid goes whole.
func TestMemoryStoreDropsEndedWindows(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore()
	l, err := New(Config{Store: s, Defaults: Limits{Rate: -1}, Apps: map[string]Limits{"wxB": {Rate: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	t0, mid := testtime.CST("2026-03-14 10:00:00"), testtime.CST("2026-03-15 00:00:00")
	for i := range 1000 {
		if d, err := l.Allow(ctx, "wxA", fmt.Sprintf("u%d", i), t0); err != nil || !d.Allowed {
			t.Fatalf("Allow = %+v, %v", d, err)
		}
	}
	if _, err := l.Allow(ctx, "wxB", "u0", t0); err != nil {
		t.Fatal(err)
	}
	check := func(when string, apps, windows, users int) {
		t.Helper()
		if a, w, u := s.size(); a != apps || w != windows || u != users {
			t.Errorf("%s: %d appids, %d windows, %d openids; want %d, %d, %d", when, a, w, u, apps, windows, users)
		}
	}
	check("first day", 2, 2, 1001)
	if _, err := l.Allow(ctx, "wxA", "u0", mid.Add(windowGrace-time.Microsecond)); err != nil {
		t.Fatal(err)
	}
	check("within the grace", 2, 3, 1002)
	if _, err := l.Allow(ctx, "wxA", "u0", mid.Add(windowGrace)); err != nil {
		t.Fatal(err)
	}
	check("after the grace", 1, 1, 1)
}

// BenchmarkMemoryStoreBuyerFootprint: the heap one day's counters hold per
// buyer, for 100,000 buyers of one appid with one call each, openids shaped
// like WeChat's and each its own allocation, as decoding makes them.
func BenchmarkMemoryStoreBuyerFootprint(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	now := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC).UnixMicro()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := NewMemoryStore()
		for i := range n {
			q := Query{AppID: "wx5f3a9c1d2e4b6a80", OpenID: fmt.Sprintf("oUpF8uMuAJO_M2pxb1Q9zNjW%04d", i), Window: "20261111", N: 1,
				Now: now, Expire: now + int64(14*time.Hour/time.Microsecond), AppQuota: -1, UserQuota: 100}
			if _, err := s.Take(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/buyer")
		runtime.KeepAlive(s)
	}
}
