package replay

import (
	"context"
	"sync"
	"time"

	"github.com/waybillkit/waybill/internal/wait"
)

// pacer spaces events 1/rate apart, with no burst. A nil pacer does not
// wait. It is safe for concurrent use.
type pacer struct {
	mu       sync.Mutex
	interval time.Duration
	next     time.Time
}

func newPacer(rate float64) *pacer {
	if rate <= 0 {
		return nil
	}
	return &pacer{interval: time.Duration(float64(time.Second) / rate)}
}

// wait blocks until the caller's turn, or until ctx ends.
func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return ctx.Err()
	}
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.interval)
	p.mu.Unlock()
	return wait.Sleep(ctx, at.Sub(now))
}
