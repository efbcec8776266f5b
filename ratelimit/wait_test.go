package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestWaitPacesCallsAndReturnsDailyDenials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l, err := New(Config{Defaults: Limits{AppDaily: 3, UserDaily: -1, Rate: 10, Burst: 1}})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := range 3 {
			d, err := l.Wait(ctx, "wxA", "u1")
			if err != nil || !d.Allowed {
				t.Fatalf("Wait %d = %+v, %v", i, d, err)
			}
			if got, want := time.Since(start), time.Duration(i)*100*time.Millisecond; got != want {
				t.Errorf("Wait %d returned after %v, want %v", i, got, want)
			}
		}
		// The daily quota is spent: Wait does not sleep until midnight.
		waited := time.Now()
		d, err := l.Wait(ctx, "wxA", "u1")
		if err != nil || d.Allowed || d.Reason != ReasonAppDaily {
			t.Fatalf("Wait after the quota = %+v, %v; want an app_daily denial", d, err)
		}
		if time.Since(waited) != 0 {
			t.Errorf("Wait slept %v on a daily denial", time.Since(waited))
		}
	})
}

func TestWaitConcurrentCallersGetDistinctTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l, err := New(Config{Defaults: Limits{Rate: 10, Burst: 1}})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var mu sync.Mutex
		times := map[time.Duration]int{}
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				d, err := l.Wait(ctx, "wxA", "")
				if err != nil || !d.Allowed {
					t.Errorf("Wait = %+v, %v", d, err)
				}
				mu.Lock()
				times[time.Since(start)]++
				mu.Unlock()
			})
		}
		wg.Wait()
		for i := range 5 {
			if at := time.Duration(i) * 100 * time.Millisecond; times[at] != 1 {
				t.Errorf("calls at %v: %d, want 1 (all: %v)", at, times[at], times)
			}
		}
	})
}

func TestWaitContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(Config{Defaults: Limits{Rate: 1, Burst: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Wait(context.Background(), "wxA", ""); err != nil {
			t.Fatal(err)
		}

		// The next token (in 1 s) is past the deadline: fail at once.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		d, err := l.Wait(ctx, "wxA", "")
		if !errors.Is(err, context.DeadlineExceeded) || d.Allowed || time.Since(start) != 0 {
			t.Errorf("Wait past the deadline = %+v, %v after %v; want DeadlineExceeded at once", d, err, time.Since(start))
		}

		// Canceled while waiting: returns then. Its daily count is given
		// back; its reserved token, at 1 s, is not.
		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		d, err = l.Wait(ctx, "wxA", "")
		if !errors.Is(err, context.Canceled) || d.Allowed || time.Since(start) != 300*time.Millisecond {
			t.Errorf("Wait canceled = %+v, %v after %v; want Canceled after 300ms", d, err, time.Since(start))
		}
		d, err = l.Allow(context.Background(), "wxA", "", start.Add(time.Second))
		if err != nil || d.Allowed || !d.RetryAt.Equal(start.Add(2*time.Second)) || d.AppRemaining != DefaultAppDaily-1 {
			t.Errorf("Allow at the canceled turn = %+v, %v; want a rate denial until 2s with 1 counted", d, err)
		}

		// A deadline after the next token (2 s): Wait takes it.
		ctx, cancel = context.WithDeadline(context.Background(), start.Add(2*time.Second))
		defer cancel()
		d, err = l.Wait(ctx, "wxA", "")
		if err != nil || !d.Allowed || time.Since(start) != 2*time.Second || !d.At.Equal(start.Add(2*time.Second)) || d.AppRemaining != DefaultAppDaily-2 {
			t.Errorf("Wait with the token at its deadline = %+v, %v after %v; want allowed at 2s, 2 counted", d, err, time.Since(start))
		}
	})
}

// countingStore counts a store's decisions.
type countingStore struct {
	Store
	takes atomic.Int64
}

func (s *countingStore) Take(ctx context.Context, q Query) (Outcome, error) {
	s.takes.Add(1)
	return s.Store.Take(ctx, q)
}

// TestWaitOneRoundTrip: however many callers wait at once, each Wait asks
// the store once, where sleeping until RetryAt and asking again made the
// losers of every token ask again.
func TestWaitOneRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &countingStore{Store: NewMemoryStore()}
		l, err := New(Config{Store: s, Defaults: Limits{Rate: 10, Burst: 2}})
		if err != nil {
			t.Fatal(err)
		}
		const waiters = 8
		var wg sync.WaitGroup
		for range waiters {
			wg.Go(func() {
				if d, err := l.Wait(context.Background(), "wxA", "u1"); err != nil || !d.Allowed {
					t.Errorf("Wait = %+v, %v", d, err)
				}
			})
		}
		wg.Wait()
		if got := s.takes.Load(); got != waiters {
			t.Errorf("%d store decisions for %d waiters, want one each", got, waiters)
		}
	})
}

// TestWaitDailyDenialWithADeadline: a daily denial is returned as a
// decision, not as a deadline error, even when ctx has a deadline.
func TestWaitDailyDenialWithADeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(Config{Defaults: Limits{AppDaily: 1, Rate: 1, Burst: 1}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		if d, err := l.Wait(ctx, "wxA", ""); err != nil || !d.Allowed {
			t.Fatalf("first Wait = %+v, %v", d, err)
		}
		d, err := l.Wait(ctx, "wxA", "")
		if err != nil || d.Allowed || d.Reason != ReasonAppDaily {
			t.Errorf("Wait past the quota = %+v, %v; want an app_daily denial and no error", d, err)
		}
	})
}
