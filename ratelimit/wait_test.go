package ratelimit

import (
	"context"
	"errors"
	"sync"
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

		// Canceled while waiting: returns then, having counted nothing.
		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		d, err = l.Wait(ctx, "wxA", "")
		if !errors.Is(err, context.Canceled) || d.Allowed || time.Since(start) != 300*time.Millisecond {
			t.Errorf("Wait canceled = %+v, %v after %v; want Canceled after 300ms", d, err, time.Since(start))
		}
		d, err = l.Allow(context.Background(), "wxA", "", start.Add(time.Second))
		if err != nil || !d.Allowed || d.AppRemaining != DefaultAppDaily-2 {
			t.Errorf("Allow at the next token = %+v, %v; want allowed, 2 counted", d, err)
		}
	})
}
