package ratelimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/waybillkit/waybill/ratelimit"
)

// A buyer's third call of the day is denied until the reset at 00:00 China
// Standard Time; another buyer of the same appid is not.
func ExampleLimiter_Allow() {
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{UserDaily: 2}})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 3, 14, 10, 0, 0, 0, time.FixedZone("CST", 8*60*60))
	for _, openid := range []string{"buyer-1", "buyer-1", "buyer-1", "buyer-2"} {
		d, err := l.Allow(ctx, "wx0123456789abcdef", openid, now)
		if err != nil {
			panic(err)
		}
		if d.Allowed {
			fmt.Printf("%s: allowed, %d left today\n", openid, d.UserRemaining)
		} else {
			fmt.Printf("%s: denied (%s) until %s\n", openid, d.Reason, d.RetryAt.Format(time.DateTime+" MST"))
		}
	}
	// Output:
	// buyer-1: allowed, 1 left today
	// buyer-1: allowed, 0 left today
	// buyer-1: denied (user_daily) until 2026-03-15 00:00:00 CST
	// buyer-2: allowed, 1 left today
}

// The smooth rate spaces calls out; a denial says when the next token comes.
func ExampleLimiter_Allow_rate() {
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: 5, Burst: 2}})
	if err != nil {
		panic(err)
	}
	start := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	for _, ms := range []int{0, 0, 0, 200} {
		now := start.Add(time.Duration(ms) * time.Millisecond)
		d, err := l.Allow(ctx, "wx0123456789abcdef", "", now)
		if err != nil {
			panic(err)
		}
		if d.Allowed {
			fmt.Printf("+%dms: allowed\n", ms)
		} else {
			fmt.Printf("+%dms: denied (%s), retry in %v\n", ms, d.Reason, d.RetryAt.Sub(now))
		}
	}
	// Output:
	// +0ms: allowed
	// +0ms: allowed
	// +0ms: denied (rate), retry in 200ms
	// +200ms: allowed
}

// Callers that can wait reserve their turns: each gets its own, one token
// apart, and one whose turn is past its budget is told so without being
// counted.
func ExampleLimiter_Reserve() {
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: 5, Burst: 2}})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	for range 5 {
		d, err := l.Reserve(ctx, "wx0123456789abcdef", "", now, 500*time.Millisecond)
		if err != nil {
			panic(err)
		}
		if d.Allowed {
			fmt.Printf("reserved: go in %v\n", d.At.Sub(now)) // then sleep until d.At
		} else {
			fmt.Printf("denied (%s): the next turn is in %v\n", d.Reason, d.RetryAt.Sub(now))
		}
	}
	// Output:
	// reserved: go in 0s
	// reserved: go in 0s
	// reserved: go in 200ms
	// reserved: go in 400ms
	// denied (rate): the next turn is in 600ms
}

// A call that WeChat refused without counting it (an expired access token,
// say) goes back to the daily quotas.
func ExampleLimiter_Refund() {
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 1}})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	d, _ := l.Allow(ctx, "wx0123456789abcdef", "buyer-1", now)
	fmt.Println("first call allowed:", d.Allowed, "left:", d.AppRemaining)
	// ... WeChat answers errcode 42001; the call did not count.
	if err := l.Refund(ctx, d); err != nil {
		panic(err)
	}
	d, _ = l.Allow(ctx, "wx0123456789abcdef", "buyer-1", now.Add(time.Second))
	fmt.Println("retry allowed:", d.Allowed, "left:", d.AppRemaining)
	// Output:
	// first call allowed: true left: 0
	// retry allowed: true left: 0
}

// WeChat's 45009 says the appid's day is spent, whatever the local count:
// stop calling for that appid until the reset.
func ExampleLimiter_ExhaustApp() {
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 3, 14, 21, 30, 0, 0, time.UTC) // 05:30 in Shanghai
	if err := l.ExhaustApp(ctx, "wx0123456789abcdef", now); err != nil {
		panic(err)
	}
	d, _ := l.Allow(ctx, "wx0123456789abcdef", "buyer-1", now.Add(time.Minute))
	fmt.Println(d.Allowed, d.Reason, d.RetryAt.UTC())
	// Output:
	// false app_daily 2026-03-15 16:00:00 +0000 UTC
}

// Limits per appid inherit field by field; the daily reset is a wall-clock
// time in a zone.
func ExampleConfig() {
	l, err := ratelimit.New(ratelimit.Config{
		Defaults: ratelimit.Limits{Rate: 10},
		Apps: map[string]ratelimit.Limits{
			"wx-big-merchant": {AppDaily: 500_000, Rate: 50},
		},
		Location: time.FixedZone("UTC+8", 8*60*60),
		ResetAt:  4 * time.Hour,
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", l.LimitsFor("wx-big-merchant"))
	fmt.Printf("%+v\n", l.LimitsFor("wx-small-shop"))
	start, end := l.Window(time.Date(2026, 3, 14, 2, 0, 0, 0, time.FixedZone("UTC+8", 8*60*60)))
	fmt.Println(start.Format(time.DateTime), "to", end.Format(time.DateTime))
	// Output:
	// {AppDaily:500000 UserDaily:100 Rate:50 Burst:50}
	// {AppDaily:100000 UserDaily:100 Rate:10 Burst:10}
	// 2026-03-13 04:00:00 to 2026-03-14 04:00:00
}
