package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

const (
	concurrentLimiters   = 4 // each with its own Redis client on Redis
	goroutinesPerLimiter = 6
)

// limiters returns concurrentLimiters limiters over shared counters.
func limiters(t *testing.T, stores Stores, cfg ratelimit.Config) []*ratelimit.Limiter {
	t.Helper()
	ls := make([]*ratelimit.Limiter, concurrentLimiters)
	for i, s := range stores(t, concurrentLimiters) {
		cfg.Store = s
		l, err := ratelimit.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
	}
	return ls
}

// hammer makes calls decisions from all goroutines of all limiters at once,
// call i made by whichever goroutine takes it first, and returns each call's
// decision.
func hammer(t *testing.T, ls []*ratelimit.Limiter, calls int, call func(l *ratelimit.Limiter, i int) (ratelimit.Decision, error)) []ratelimit.Decision {
	t.Helper()
	out := make([]ratelimit.Decision, calls)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(ls)*goroutinesPerLimiter)
	start := make(chan struct{})
	for _, l := range ls {
		for range goroutinesPerLimiter {
			wg.Go(func() {
				<-start
				for i := int(next.Add(1) - 1); i < calls; i = int(next.Add(1) - 1) {
					d, err := call(l, i)
					if err != nil {
						errs <- fmt.Errorf("call %d: %w", i, err)
						return
					}
					out[i] = d
				}
			})
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// testConcurrentQuotas has many limiters (separate Redis clients on Redis)
// race over one appid. Each group of calls must get exactly its quota when
// demand exceeds it, all of the demand when it does not, and never more;
// the Remaining counts of the allowed calls must be all different, as they
// are when each decision is atomic.
func testConcurrentQuotas(t *testing.T, stores Stores) {
	t0 := testtime.CST("2026-03-14 10:00:00")
	beforeReset, afterReset := testtime.CST("2026-03-14 23:59:59.999"), testtime.CST("2026-03-15 00:00:00")
	unique := func(i int) (string, time.Time) { return fmt.Sprintf("u%d", i), t0 }
	all := func(int) string { return "all" }
	for _, c := range []struct {
		name   string
		limits ratelimit.Limits
		calls  int
		call   func(i int) (openid string, now time.Time)
		group  func(i int) string
		want   map[string]int
		// quota and left check Remaining: the allowed calls of a group
		// leave quota-1, quota-2, ... calls, each once. Nil left: no check.
		quota int64
		left  func(ratelimit.Decision) int64
	}{
		{"appid quota, demand three times the quota",
			ratelimit.Limits{AppDaily: 200, UserDaily: -1, Rate: -1}, 600, unique, all,
			map[string]int{"all": 200}, 200, func(d ratelimit.Decision) int64 { return d.AppRemaining }},
		{"appid quota, demand under the quota",
			ratelimit.Limits{AppDaily: 200, UserDaily: -1, Rate: -1}, 150, unique, all,
			map[string]int{"all": 150}, 200, func(d ratelimit.Decision) int64 { return d.AppRemaining }},
		{"openid quota, two buyers",
			ratelimit.Limits{AppDaily: -1, UserDaily: 100, Rate: -1}, 600,
			func(i int) (string, time.Time) { return fmt.Sprintf("buyer%d", i%2), t0 },
			func(i int) string { return fmt.Sprintf("buyer%d", i%2) },
			map[string]int{"buyer0": 100, "buyer1": 100}, 100, func(d ratelimit.Decision) int64 { return d.UserRemaining }},
		{"appid quota on both sides of the 00:00 Shanghai reset",
			ratelimit.Limits{AppDaily: 100, UserDaily: -1, Rate: -1}, 600,
			func(i int) (string, time.Time) {
				if i%2 == 0 {
					return fmt.Sprintf("u%d", i), beforeReset
				}
				return fmt.Sprintf("u%d", i), afterReset
			},
			func(i int) string { return []string{"before", "after"}[i%2] },
			map[string]int{"before": 100, "after": 100}, 100, func(d ratelimit.Decision) int64 { return d.AppRemaining }},
		{"burst at one instant",
			ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 1, Burst: 50}, 300, unique, all,
			map[string]int{"all": 50}, 0, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ls := limiters(t, stores, ratelimit.Config{Defaults: c.limits})
			ds := hammer(t, ls, c.calls, func(l *ratelimit.Limiter, i int) (ratelimit.Decision, error) {
				openid, now := c.call(i)
				return l.Allow(context.Background(), "wxA", openid, now)
			})
			got := map[string]int{}
			lefts := map[string][]int64{}
			for i, d := range ds {
				if !d.Allowed {
					continue
				}
				g := c.group(i)
				got[g]++
				if c.left != nil {
					lefts[g] = append(lefts[g], c.left(d))
				}
			}
			for g, n := range c.want {
				if got[g] != n {
					t.Errorf("%s: %d calls allowed, want %d", g, got[g], n)
				}
				if c.left == nil {
					continue
				}
				want := make([]int64, n)
				for i := range want {
					want[i] = c.quota - int64(n) + int64(i)
				}
				slices.Sort(lefts[g])
				if !slices.Equal(lefts[g], want) {
					t.Errorf("%s: Remaining of the allowed calls %v, want each of %d..%d once", g, lefts[g], c.quota-int64(n), c.quota-1)
				}
			}
		})
	}
}

// testConcurrentRefunds: while limiters race, the first calls allowed are
// refunded at once. Afterwards a second wave must bring the appid to
// exactly its quota, which shows every refund landed once.
func testConcurrentRefunds(t *testing.T, stores Stores) {
	const quota, refunds = 150, 60
	now := testtime.CST("2026-03-14 10:00:00")
	ls := limiters(t, stores, ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: quota, UserDaily: -1, Rate: -1}})
	ctx := context.Background()
	var refunded atomic.Int64
	first := hammer(t, ls, 3*quota, func(l *ratelimit.Limiter, i int) (ratelimit.Decision, error) {
		d, err := l.Allow(ctx, "wxA", fmt.Sprintf("u%d", i), now)
		if err == nil && d.Allowed && refunded.Add(1) <= refunds {
			err = l.Refund(ctx, d)
		}
		return d, err
	})
	second := hammer(t, ls, 3*quota, func(l *ratelimit.Limiter, i int) (ratelimit.Decision, error) {
		return l.Allow(ctx, "wxA", fmt.Sprintf("v%d", i), now)
	})
	allowed := 0
	for _, d := range slices.Concat(first, second) {
		if d.Allowed {
			allowed++
		}
	}
	if allowed != quota+refunds {
		t.Errorf("%d calls allowed with %d refunded, want %d", allowed, refunds, quota+refunds)
	}
	d, err := ls[0].Allow(ctx, "wxA", "w", now)
	if err != nil || d.Allowed || d.AppRemaining != 0 {
		t.Errorf("after both waves: %+v, %v; want denied with 0 left", d, err)
	}
}

// testConcurrentReservations has many limiters race to reserve at one
// instant. Beyond the burst every reservation must get its own turn, one
// interval after the previous, up to maxWait; the rest are denied with the
// first turn not taken as RetryAt.
func testConcurrentReservations(t *testing.T, stores Stores) {
	now := testtime.CST("2026-03-14 10:00:00")
	const (
		burst    = 5
		interval = 10 * time.Millisecond // Rate 100
		calls    = 120
	)
	for _, c := range []struct {
		name    string
		maxWait time.Duration
		turns   int // reservations beyond the burst that fit in maxWait
	}{
		{"every call fits in maxWait", time.Hour, calls - burst},
		{"maxWait cuts the queue", 500 * time.Millisecond, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			ls := limiters(t, stores, ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 100, Burst: burst}})
			ds := hammer(t, ls, calls, func(l *ratelimit.Limiter, i int) (ratelimit.Decision, error) {
				return l.Reserve(context.Background(), "wxA", "", now, c.maxWait)
			})
			var waits []time.Duration
			denied := 0
			for i, d := range ds {
				switch {
				case d.Allowed:
					waits = append(waits, d.At.Sub(now))
				case d.Reason != ratelimit.ReasonRate || !d.At.IsZero():
					t.Errorf("call %d: %+v, want allowed or a rate denial with no At", i, d)
				default:
					denied++
					if want := now.Add(time.Duration(c.turns+1) * interval); !d.RetryAt.Equal(want) {
						t.Errorf("call %d: denied with RetryAt %s, want %s", i, d.RetryAt, want)
					}
				}
			}
			want := make([]time.Duration, burst, burst+c.turns)
			for i := 1; i <= c.turns; i++ {
				want = append(want, time.Duration(i)*interval)
			}
			slices.Sort(waits)
			if !slices.Equal(waits, want) {
				t.Errorf("waits of the allowed calls %v,\nwant %d of 0 then one at each of 10ms..%v", waits, burst, time.Duration(c.turns)*interval)
			}
			if denied != calls-burst-c.turns {
				t.Errorf("%d denied, want %d", denied, calls-burst-c.turns)
			}
		})
	}
}
