package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

// The decision table itself, which runs on every store, is in
// ratelimit/internal/storetest.

// TestRejectsImpossibleRequests: AllowN and ReserveN refuse, with an error
// and without counting anything, the calls that could never be allowed.
func TestRejectsImpossibleRequests(t *testing.T) {
	ctx := context.Background()
	now := testtime.CST("2026-03-14 10:00:00")
	type request struct {
		name        string
		app, user   string
		n           int
		maxWait     time.Duration // ReserveN's
		capacityErr bool
	}
	for _, form := range []struct {
		op       string
		call     func(l *Limiter, r request) (Decision, error)
		requests []request
		// after runs on the same limiter once every request was rejected,
		// to show that they counted nothing.
		after func(t *testing.T, l *Limiter)
	}{
		{"AllowN", func(l *Limiter, r request) (Decision, error) {
			return l.AllowN(ctx, r.app, r.user, now, r.n)
		}, []request{
			{name: "empty appid", app: "", user: "u1", n: 1},
			{name: "n zero", app: "wxA", user: "u1", n: 0},
			{name: "n negative", app: "wxA", user: "u1", n: -1},
			{name: "n over burst", app: "wxA", user: "", n: 5, capacityErr: true},
			{name: "n over user quota", app: "wxA", user: "u1", n: 4, capacityErr: true},
		}, func(t *testing.T, l *Limiter) {
			d, err := l.AllowN(ctx, "wxA", "u1", now, 3)
			if err != nil || !d.Allowed || d.AppRemaining != 7 {
				t.Fatalf("AllowN(3) after rejections = %+v, %v; want allowed with 7 left", d, err)
			}
			if err := l.RefundN(ctx, d, 4); err == nil {
				t.Error("RefundN(4) of a decision that allowed 3: no error")
			}
			if err := l.ExhaustApp(ctx, "", now); err == nil {
				t.Error("ExhaustApp with an empty appid: no error")
			}
		}},
		{"ReserveN", func(l *Limiter, r request) (Decision, error) {
			return l.ReserveN(ctx, r.app, r.user, now, r.n, r.maxWait)
		}, []request{
			{name: "negative maxWait", app: "wxA", n: 1, maxWait: -time.Nanosecond},
			{name: "empty appid", app: "", n: 1, maxWait: time.Second},
			{name: "n zero", app: "wxA", n: 0, maxWait: time.Second},
			// Waiting cannot make a bucket deeper.
			{name: "n over burst, however long the wait", app: "wxA", n: 5, maxWait: time.Hour, capacityErr: true},
		}, func(t *testing.T, l *Limiter) {
			if d, err := l.Reserve(ctx, "wxA", "u1", now, -time.Second); err == nil || d.Allowed {
				t.Errorf("Reserve(maxWait -1s) = %+v, %v; want an error", d, err)
			}
			// The whole burst is there.
			d, err := l.ReserveN(ctx, "wxA", "", now, 4, 0)
			if err != nil || !d.Allowed || !d.At.Equal(now) || d.AppRemaining != 6 {
				t.Fatalf("ReserveN(4) after rejections = %+v, %v; want allowed at now with 6 left", d, err)
			}
		}},
	} {
		t.Run(form.op, func(t *testing.T) {
			l, err := New(Config{Defaults: Limits{AppDaily: 10, UserDaily: 3, Rate: 5, Burst: 4}})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range form.requests {
				t.Run(r.name, func(t *testing.T) {
					d, err := form.call(l, r)
					if err == nil || d.Allowed {
						t.Fatalf("%s = %+v, %v; want an error", form.op, d, err)
					}
					if got := errors.Is(err, ErrExceedsCapacity); got != r.capacityErr {
						t.Errorf("errors.Is(%v, ErrExceedsCapacity) = %v, want %v", err, got, r.capacityErr)
					}
				})
			}
			form.after(t, l)
		})
	}
}
