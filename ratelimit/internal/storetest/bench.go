package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

// The benchmarks measure one allowed decision with all three limits in
// force (quotas and rate too large to deny), over 1,000 openids of one
// appid: the per-message path. The clock advances a microsecond a call.
func benchLimiter(b *testing.B, s ratelimit.Store) *ratelimit.Limiter {
	l, err := ratelimit.New(ratelimit.Config{Store: s, Defaults: ratelimit.Limits{AppDaily: 1 << 40, UserDaily: 1 << 40, Rate: 1e6, Burst: 1 << 30}})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

var benchOpenIDs = func() []string {
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("oBench%023d", i) // 28 characters, like an openid
	}
	return ids
}()

// BenchAllow measures Allow on s from one goroutine.
func BenchAllow(b *testing.B, s ratelimit.Store) {
	ctx, l := context.Background(), benchLimiter(b, s)
	t0 := testtime.CST("2026-03-14 10:00:00")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d, err := l.Allow(ctx, "wx0123456789abcdef", benchOpenIDs[i%len(benchOpenIDs)], t0.Add(time.Duration(i)*time.Microsecond))
		if err != nil || !d.Allowed {
			b.Fatalf("Allow = %+v, %v", d, err)
		}
		i++
	}
}

// BenchAllowParallel measures Allow on s from GOMAXPROCS goroutines.
func BenchAllowParallel(b *testing.B, s ratelimit.Store) {
	ctx, l := context.Background(), benchLimiter(b, s)
	t0 := testtime.CST("2026-03-14 10:00:00")
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			d, err := l.Allow(ctx, "wx0123456789abcdef", benchOpenIDs[i%int64(len(benchOpenIDs))], t0.Add(time.Duration(i)*time.Microsecond))
			if err != nil || !d.Allowed {
				b.Errorf("Allow = %+v, %v", d, err)
				return
			}
		}
	})
}
