// Package wait holds the two waits every waybill package shares: a sleep
// that ends with its context, and the exponential backoff with jitter.
// The root package, kafka and replay import it.
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
