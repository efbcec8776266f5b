package storetest

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

type action int

const (
	doAllow action = iota
	doRefund
	doExhaust
)

// step is one call in a decision case. Allow steps carry the decision they
// must get; refund steps name the earlier step whose decision they refund.
type step struct {
	do        action
	at        time.Time
	app, user string
	n         int
	ref       int
	// reserve makes the step ReserveN with maxWait instead of AllowN.
	reserve bool
	maxWait time.Duration

	allowed           bool
	reason            ratelimit.Reason
	retryAt           time.Time
	goAt              time.Time // ratelimit.Decision.At of an allowed step
	appLeft, userLeft int64
}

func allow(at time.Time, app, user string) step {
	return step{do: doAllow, at: at, app: app, user: user, n: 1}
}

func allowN(at time.Time, app, user string, n int) step {
	s := allow(at, app, user)
	s.n = n
	return s
}

func reserve(at time.Time, app, user string, maxWait time.Duration) step {
	s := allow(at, app, user)
	s.reserve, s.maxWait = true, maxWait
	return s
}

func reserveN(at time.Time, app, user string, n int, maxWait time.Duration) step {
	s := reserve(at, app, user, maxWait)
	s.n = n
	return s
}

// ok expects the call allowed to go at once (At is the step's time).
func (s step) ok(appLeft, userLeft int64) step {
	return s.okAt(s.at, appLeft, userLeft)
}

// okAt expects the call allowed to go at goAt.
func (s step) okAt(goAt time.Time, appLeft, userLeft int64) step {
	s.allowed, s.goAt, s.appLeft, s.userLeft = true, goAt, appLeft, userLeft
	return s
}

func (s step) deny(r ratelimit.Reason, retryAt time.Time, appLeft, userLeft int64) step {
	s.reason, s.retryAt, s.appLeft, s.userLeft = r, retryAt, appLeft, userLeft
	return s
}

// refund gives back all calls of step ref; refundN n of them.
func refund(ref int) step                   { return step{do: doRefund, ref: ref} }
func refundN(ref, n int) step               { return step{do: doRefund, ref: ref, n: n} }
func exhaust(at time.Time, app string) step { return step{do: doExhaust, at: at, app: app} }

type decisionCase struct {
	name  string
	cfg   ratelimit.Config
	steps []step
}

func decisionCases() []decisionCase {
	t0 := testtime.CST("2026-03-14 10:00:00")
	mid := testtime.CST("2026-03-15 00:00:00") // the first reset after t0
	sec := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	noRate := func(app, user int64) ratelimit.Config {
		return ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: app, UserDaily: user, Rate: -1}}
	}
	return []decisionCase{
		{"zero config: WeChat's quotas, 20 calls/s, burst 20", ratelimit.Config{}, []step{
			allowN(t0, "wxA", "u1", 20).ok(99_980, 80),
			allow(t0, "wxA", "u2").deny(ratelimit.ReasonRate, sec(0.05), 99_980, 100),
			allow(sec(0.05), "wxA", "u2").ok(99_979, 99),
		}},
		{"appid daily quota", noRate(3, -1), []step{
			allow(t0, "wxA", "u1").ok(2, -1),
			allow(t0, "wxA", "u2").ok(1, -1),
			allow(t0, "wxA", "u3").ok(0, -1),
			allow(t0, "wxA", "u4").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(t0, "wxB", "u4").ok(2, -1),
			allow(mid.Add(-time.Nanosecond), "wxA", "u4").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(mid, "wxA", "u4").ok(2, -1),
		}},
		{"openid daily quota", noRate(10, 2), []step{
			allow(t0, "wxA", "u1").ok(9, 1),
			allow(t0, "wxA", "u1").ok(8, 0),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonUserDaily, mid, 8, 0),
			allow(t0, "wxA", "u2").ok(7, 1),
			allow(t0, "wxB", "u1").ok(9, 1), // openids count per appid
			allow(mid, "wxA", "u1").ok(9, 1),
		}},
		{"appid denial named before openid denial", noRate(2, 2), []step{
			allow(t0, "wxA", "u1").ok(1, 1),
			allow(t0, "wxA", "u1").ok(0, 0),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonAppDaily, mid, 0, 0),
		}},
		{"a denial consumes nothing", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 3, UserDaily: 1, Rate: 1, Burst: 1}}, []step{
			allow(t0, "wxA", "u1").ok(2, 0),
			allow(t0, "wxA", "u2").deny(ratelimit.ReasonRate, sec(1), 2, 1),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonUserDaily, mid, 2, 0),
			allow(sec(1), "wxA", "u2").ok(1, 0),
			allow(sec(1.5), "wxA", "u3").deny(ratelimit.ReasonRate, sec(2), 1, 1),
			allow(sec(2), "wxA", "u3").ok(0, 0),
			allow(sec(3), "wxA", "u4").deny(ratelimit.ReasonAppDaily, mid, 0, 1),
		}},
		{"smooth rate and burst", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 2, Burst: 3}}, []step{
			allowN(t0, "wxA", "u1", 3).ok(-1, -1),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonRate, sec(0.5), -1, -1),
			allow(sec(0.499), "wxA", "u1").deny(ratelimit.ReasonRate, sec(0.5), -1, -1),
			allow(sec(0.5), "wxA", "u1").ok(-1, -1),
			allow(sec(0.5), "wxA", "u1").deny(ratelimit.ReasonRate, sec(1), -1, -1),
			allowN(sec(0.5), "wxA", "u1", 2).deny(ratelimit.ReasonRate, sec(1.5), -1, -1),
			allow(t0, "wxB", "u1").ok(-1, -1), // each appid has its own bucket
			// Idle for long, the bucket holds Burst tokens, not more.
			allowN(sec(60), "wxA", "u1", 3).ok(-1, -1),
			allow(sec(60), "wxA", "u1").deny(ratelimit.ReasonRate, sec(60.5), -1, -1),
		}},
		{"fractional rate", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 0.25}}, []step{
			allow(t0, "wxA", "").ok(-1, -1),
			allow(sec(1), "wxA", "").deny(ratelimit.ReasonRate, sec(4), -1, -1),
			allow(sec(4), "wxA", "").ok(-1, -1),
		}},
		{"AllowN counts n calls", noRate(5, 3), []step{
			allowN(t0, "wxA", "u1", 2).ok(3, 1),
			allowN(t0, "wxA", "u1", 2).deny(ratelimit.ReasonUserDaily, mid, 3, 1),
			allowN(t0, "wxA", "u2", 2).ok(1, 1),
			allowN(t0, "wxA", "u3", 2).deny(ratelimit.ReasonAppDaily, mid, 1, 3),
			allow(t0, "wxA", "u3").ok(0, 2),
		}},
		{"reset at 00:00 Asia/Shanghai, not at UTC midnight", noRate(1, -1), []step{
			allow(testtime.CST("2026-03-14 07:59:59"), "wxA", "u1").ok(0, -1),
			// 08:00 in Shanghai is midnight UTC: no reset.
			allow(testtime.CST("2026-03-14 08:00:00"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(testtime.CST("2026-03-14 23:59:59.999999999"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(mid, "wxA", "u1").ok(0, -1),
			allow(testtime.CST("2026-03-15 08:00:00"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.CST("2026-03-16 00:00:00"), 0, -1),
		}},
		{"reset time and zone configured", ratelimit.Config{
			Defaults: ratelimit.Limits{AppDaily: 1, UserDaily: -1, Rate: -1},
			Location: time.UTC, ResetAt: 4*time.Hour + 30*time.Minute,
		}, []step{
			allow(testtime.At(time.UTC, "2026-03-14 04:29:59"), "wxA", "u1").ok(0, -1),
			allow(testtime.At(time.UTC, "2026-03-14 04:29:59.9"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.At(time.UTC, "2026-03-14 04:30:00"), 0, -1),
			allow(testtime.At(time.UTC, "2026-03-14 04:30:00"), "wxA", "u1").ok(0, -1),
			allow(testtime.At(time.UTC, "2026-03-15 04:00:00"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.At(time.UTC, "2026-03-15 04:30:00"), 0, -1),
		}},
		{"New York, spring forward: a 23-hour window", ratelimit.Config{
			Defaults: ratelimit.Limits{AppDaily: 1, UserDaily: -1, Rate: -1}, Location: testtime.NewYork,
		}, []step{
			allow(testtime.At(testtime.NewYork, "2026-03-08 00:00:00"), "wxA", "u1").ok(0, -1),
			allow(testtime.At(testtime.NewYork, "2026-03-08 23:59:59"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.At(testtime.NewYork, "2026-03-09 00:00:00"), 0, -1),
			allow(testtime.At(testtime.NewYork, "2026-03-09 00:00:00"), "wxA", "u1").ok(0, -1),
		}},
		{"New York, fall back: a 25-hour window", ratelimit.Config{
			Defaults: ratelimit.Limits{AppDaily: 1, UserDaily: -1, Rate: -1}, Location: testtime.NewYork,
		}, []step{
			allow(testtime.At(testtime.NewYork, "2026-11-01 00:00:00"), "wxA", "u1").ok(0, -1),
			// 24.5 hours after the reset, still the same day in New York.
			allow(testtime.At(testtime.NewYork, "2026-11-01 23:30:00"), "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.At(testtime.NewYork, "2026-11-02 00:00:00"), 0, -1),
			allow(testtime.At(testtime.NewYork, "2026-11-02 00:00:00"), "wxA", "u1").ok(0, -1),
		}},
		{"refund gives the daily quotas back", noRate(2, 1), []step{
			allow(t0, "wxA", "u1").ok(1, 0), // 0
			refund(0),
			allow(t0, "wxA", "u1").ok(1, 0),
			allow(t0, "wxA", "u2").ok(0, 0), // 3
			allow(t0, "wxA", "u3").deny(ratelimit.ReasonAppDaily, mid, 0, 1),
			refund(4), // a denial: nothing to give back
			allow(t0, "wxA", "u3").deny(ratelimit.ReasonAppDaily, mid, 0, 1),
			refund(3),
			allow(t0, "wxA", "u2").ok(0, 0),
		}},
		{"refund keeps the rate token spent", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 10, UserDaily: -1, Rate: 1, Burst: 1}}, []step{
			allow(t0, "wxA", "u1").ok(9, -1),
			refund(0),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonRate, sec(1), 10, -1),
		}},
		{"RefundN gives back part", noRate(5, -1), []step{
			allowN(t0, "wxA", "u1", 3).ok(2, -1),
			refundN(0, 2),
			allowN(t0, "wxA", "u1", 4).ok(0, -1),
		}},
		{"refund after the window ended does nothing", noRate(1, 1), []step{
			allow(t0, "wxA", "u1").ok(0, 0),
			allow(mid, "wxA", "u1").ok(0, 0),
			refund(0),
			allow(mid, "wxA", "u1").deny(ratelimit.ReasonAppDaily, testtime.CST("2026-03-16 00:00:00"), 0, 0),
		}},
		{"ExhaustApp closes the appid until the reset", noRate(100, -1), []step{
			allow(t0, "wxA", "u1").ok(99, -1), // 0
			exhaust(sec(60), "wxA"),
			allow(sec(61), "wxA", "u1").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(sec(61), "wxB", "u1").ok(99, -1),
			refund(0),
			allow(sec(62), "wxA", "u1").deny(ratelimit.ReasonAppDaily, mid, 0, -1),
			allow(mid, "wxA", "u1").ok(99, -1),
		}},
		{"per-appid limits inherit field by field", ratelimit.Config{
			Defaults: ratelimit.Limits{AppDaily: 2, Rate: -1},
			Apps:     map[string]ratelimit.Limits{"wxA": {AppDaily: 1}, "wxC": {UserDaily: 1}},
		}, []step{
			allow(t0, "wxA", "u1").ok(0, 99),
			allow(t0, "wxA", "u2").deny(ratelimit.ReasonAppDaily, mid, 0, 100),
			allow(t0, "wxB", "u1").ok(1, 99),
			allow(t0, "wxB", "u1").ok(0, 98),
			allow(t0, "wxC", "u1").ok(1, 0),
			allow(t0, "wxC", "u1").deny(ratelimit.ReasonUserDaily, mid, 1, 0),
		}},
		{"no openid: no per-user quota", noRate(3, 1), []step{
			allow(t0, "wxA", "").ok(2, -1),
			allow(t0, "wxA", "").ok(1, -1),
			refund(1),
			allow(t0, "wxA", "u1").ok(1, 0),
		}},

		// Reservations. 10 calls/s is one token every 100 ms.
		{"reserve within maxWait, deny beyond it counting nothing", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 5, UserDaily: -1, Rate: 10, Burst: 2}}, []step{
			reserveN(t0, "wxA", "u1", 2, 250*time.Millisecond).ok(3, -1), // the burst: no wait
			reserve(t0, "wxA", "u1", 250*time.Millisecond).okAt(sec(0.1), 2, -1),
			reserve(t0, "wxA", "u1", 250*time.Millisecond).okAt(sec(0.2), 1, -1),
			// The next turn, 0.3 s, is 300 ms away: denied as AllowN is.
			reserve(t0, "wxA", "u1", 250*time.Millisecond).deny(ratelimit.ReasonRate, sec(0.3), 1, -1),
			allow(t0, "wxA", "u1").deny(ratelimit.ReasonRate, sec(0.3), 1, -1),
			// Exactly maxWait away is within it.
			reserve(sec(0.05), "wxA", "u1", 250*time.Millisecond).okAt(sec(0.3), 0, -1),
			// The daily quota denies whatever the wait.
			reserve(sec(0.05), "wxA", "u1", time.Hour).deny(ratelimit.ReasonAppDaily, mid, 0, -1),
		}},
		{"maxWait is a bound to the microsecond", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 10, Burst: 1}}, []step{
			reserve(t0, "wxA", "", 0).ok(-1, -1),
			reserve(t0, "wxA", "", 100*time.Millisecond-time.Microsecond).deny(ratelimit.ReasonRate, sec(0.1), -1, -1),
			// Sub-microsecond parts of maxWait do not count.
			reserve(t0, "wxA", "", 100*time.Millisecond-time.Nanosecond).deny(ratelimit.ReasonRate, sec(0.1), -1, -1),
			reserve(t0, "wxA", "", 100*time.Millisecond).okAt(sec(0.1), -1, -1),
			// maxWait 0 is AllowN.
			reserve(sec(0.1), "wxA", "", 0).deny(ratelimit.ReasonRate, sec(0.2), -1, -1),
			reserve(sec(0.2), "wxA", "", 0).ok(-1, -1),
		}},
		{"successive reservations get strictly spaced turns", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 4, Burst: 2}}, []step{
			// 4 calls/s: one turn every 250 ms beyond a burst of 2.
			reserve(t0, "wxA", "", 10*time.Second).ok(-1, -1),
			reserve(t0, "wxA", "", 10*time.Second).ok(-1, -1),
			reserve(t0, "wxA", "", 10*time.Second).okAt(sec(0.25), -1, -1),
			reserve(t0, "wxA", "", 10*time.Second).okAt(sec(0.5), -1, -1),
			reserve(sec(0.1), "wxA", "", 10*time.Second).okAt(sec(0.75), -1, -1),
			// n calls go together when the last of their tokens comes.
			reserveN(sec(0.1), "wxA", "", 2, 10*time.Second).okAt(sec(1.25), -1, -1),
			reserve(sec(1), "wxA", "", 10*time.Second).okAt(sec(1.5), -1, -1),
			// An AllowN between reservations waits behind them.
			allow(sec(1), "wxA", "").deny(ratelimit.ReasonRate, sec(1.75), -1, -1),
			// Once the turns are past and the bucket refilled, the burst is back.
			reserve(sec(3), "wxA", "", 10*time.Second).ok(-1, -1),
			allow(sec(3), "wxA", "").ok(-1, -1),
			reserve(sec(3), "wxA", "", 10*time.Second).okAt(sec(3.25), -1, -1),
		}},
		{"refunding a reservation gives back the daily counts, not its turn", ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 3, UserDaily: 2, Rate: 1, Burst: 1}}, []step{
			reserve(t0, "wxA", "u1", 5*time.Second).ok(2, 1),
			reserve(t0, "wxA", "u1", 5*time.Second).okAt(sec(1), 1, 0), // 1
			refund(1),
			reserve(t0, "wxA", "u1", 5*time.Second).okAt(sec(2), 1, 0),
		}},
	}
}

// runSteps plays steps on a Limiter made from cfg and checks every decision.
func runSteps(t *testing.T, cfg ratelimit.Config, steps []step) {
	t.Helper()
	ctx := context.Background()
	l, err := ratelimit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]ratelimit.Decision, len(steps))
	for i, s := range steps {
		switch s.do {
		case doRefund:
			// Refund is RefundN of every call the decision allowed.
			if s.n == 0 {
				if err := l.Refund(ctx, got[s.ref]); err != nil {
					t.Fatalf("step %d: Refund: %v", i, err)
				}
			} else if err := l.RefundN(ctx, got[s.ref], s.n); err != nil {
				t.Fatalf("step %d: RefundN: %v", i, err)
			}
			continue
		case doExhaust:
			if err := l.ExhaustApp(ctx, s.app, s.at); err != nil {
				t.Fatalf("step %d: ExhaustApp: %v", i, err)
			}
			continue
		}
		var d ratelimit.Decision
		var err error
		call := fmt.Sprintf("AllowN(%s, %q, %s, %d)", s.app, s.user, s.at, s.n)
		if s.reserve {
			call = fmt.Sprintf("ReserveN(%s, %q, %s, %d, %v)", s.app, s.user, s.at, s.n, s.maxWait)
			d, err = l.ReserveN(ctx, s.app, s.user, s.at, s.n, s.maxWait)
		} else {
			d, err = l.AllowN(ctx, s.app, s.user, s.at, s.n)
		}
		if err != nil {
			t.Fatalf("step %d: %s: %v", i, call, err)
		}
		got[i] = d
		// The zero goAt of a denial wants a zero At.
		if d.Allowed != s.allowed || d.Reason != s.reason || !d.RetryAt.Equal(s.retryAt) || !d.At.Equal(s.goAt) ||
			d.AppRemaining != s.appLeft || d.UserRemaining != s.userLeft {
			t.Errorf("step %d: %s =\n\tallowed %v, reason %v, retry %s, at %s, left %d/%d; want\n\tallowed %v, reason %v, retry %s, at %s, left %d/%d",
				i, call,
				d.Allowed, d.Reason, d.RetryAt, d.At, d.AppRemaining, d.UserRemaining,
				s.allowed, s.reason, s.retryAt, s.goAt, s.appLeft, s.userLeft)
		}
		if _, end := l.Window(s.at); !d.WindowEnd.Equal(end) {
			t.Errorf("step %d: WindowEnd %s, want %s", i, d.WindowEnd, end)
		}
	}
}

// testDecisions plays every case of the decision table.
func testDecisions(t *testing.T, stores Stores) {
	for _, c := range decisionCases() {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Store = stores.one(t)
			runSteps(t, c.cfg, c.steps)
		})
	}
}

// testDecisionsReserveZeroIsAllowN replays every AllowN step of the table as
// ReserveN with maxWait 0, which must decide exactly the same.
func testDecisionsReserveZeroIsAllowN(t *testing.T, stores Stores) {
	for _, c := range decisionCases() {
		t.Run(c.name, func(t *testing.T) {
			steps := make([]step, len(c.steps))
			for i, s := range c.steps {
				if s.do == doAllow && !s.reserve {
					s.reserve, s.maxWait = true, 0
				}
				steps[i] = s
			}
			c.cfg.Store = stores.one(t)
			runSteps(t, c.cfg, steps)
		})
	}
}

// testReserveHugeMaxWait: a maxWait too long for the store's exact
// arithmetic is capped, not an error, and still reserves.
func testReserveHugeMaxWait(t *testing.T, stores Stores) {
	ctx := context.Background()
	now := testtime.CST("2026-03-14 10:00:00")
	l, err := ratelimit.New(ratelimit.Config{Store: stores.one(t), Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: 1, Burst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d, err := l.Reserve(ctx, "wxA", "", now, time.Duration(math.MaxInt64))
		if want := now.Add(time.Duration(i) * time.Second); err != nil || !d.Allowed || !d.At.Equal(want) {
			t.Errorf("Reserve %d = %+v, %v; want allowed at %s", i, d, err, want)
		}
	}
}
