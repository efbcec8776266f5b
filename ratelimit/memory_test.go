package ratelimit

import (
	"context"
	"fmt"
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
