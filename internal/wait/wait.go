// Package wait holds the waits waybill's packages share: a sleep that
// ends with its context, a periodic run that ends with it, and the
// exponential backoff with jitter.
package wait

import (
	"context"
	"math/rand/v2"
	"time"
)

// Sleep waits d, or until ctx ends (then it returns ctx.Err()). A d of
// zero or less returns at once.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Backoff is exponential from 200 ms, capped at 30 s, with ±20 % jitter so
// that many handlers do not retry in lockstep. attempt is 1-based.
func Backoff(attempt int) time.Duration {
	const base, ceiling = 200 * time.Millisecond, 30 * time.Second
	d := base
	for i := 1; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	jitter := time.Duration(rand.Int64N(int64(d)/5*2+1)) - d/5
	return d + jitter
}

// Every runs f every d until ctx ends (the first run after d).
func Every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
