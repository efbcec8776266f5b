package waybill

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/wechat"
)

// TestDecideTable checks the default decision table row by row: every
// wechat.Class, the open breaker, and the not-yet bound.
func TestDecideTable(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC) // 23:04:05 in Shanghai
	midnight := time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)
	p := RetryPolicy{}
	breakerOpen := fmt.Errorf("trace: %w", errors.Join(ErrBreakerOpen, errors.New("circuit breaker is open")))
	cases := []struct {
		name     string
		err      error
		class    wechat.Class
		attempts int
		want     Verdict
	}{
		{"transient", wechatErr(-1), wechat.ClassTransient, 50, Verdict{Action: ActionRetry}},
		{"token", wechatErr(42001), wechat.ClassToken, 1, Verdict{Action: ActionRetry}},
		{"unknown class retries", errors.New("?"), wechat.Class(0), 1, Verdict{Action: ActionRetry}},
		{"breaker open", breakerOpen, wechat.ClassTransient, 3, Verdict{Action: ActionPark, Until: now.Add(5 * time.Second)}},
		{"minute rate", wechatErr(45011), wechat.ClassMinuteRate, 1, Verdict{Action: ActionPark, Until: time.Date(2026, 11, 26, 15, 5, 0, 0, time.UTC)}},
		// Spread over the next window's first 5 min by the time of day.
		{"daily quota", wechatErr(45009), wechat.ClassDailyQuota, 1, Verdict{Action: ActionPark, Until: midnight.Add(spreadOf(23*time.Hour + 4*time.Minute + 5*time.Second)), Window: true}},
		{"not yet", wechatErr(931023), wechat.ClassNotYet, 23, Verdict{Action: ActionPark, Until: now.Add(time.Hour)}},
		{"not yet, bound reached", wechatErr(931023), wechat.ClassNotYet, 24, Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonNotYetExhausted}},
		{"permanent", wechatErr(40003), wechat.ClassPermanent, 1, Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonPermanent}},
		{"configuration", wechatErr(48001), wechat.ClassConfiguration, 1, Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonConfiguration}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := p.Decide(tc.err, tc.class, tc.attempts, now)
			got.Until = got.Until.UTC() // the instant matters, not its zone
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestNextShanghaiMidnight(t *testing.T) {
	cases := map[time.Time]time.Time{
		// 07:59:59 UTC is 15:59:59 in Shanghai: midnight is 16:00 UTC.
		time.Date(2026, 11, 26, 7, 59, 59, 0, time.UTC): time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC),
		// 16:00 UTC is exactly midnight: the next one is a day later.
		time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC): time.Date(2026, 11, 27, 16, 0, 0, 0, time.UTC),
		// Just before UTC midnight is already the next day in Shanghai.
		time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC): time.Date(2027, 1, 1, 16, 0, 0, 0, time.UTC),
	}
	for now, want := range cases {
		assert.True(t, want.Equal(nextShanghaiMidnight(now)), "after %s: got %s, want %s", now, nextShanghaiMidnight(now), want)
	}
}

func TestDefaultBackoffGrowsAndCaps(t *testing.T) {
	for attempt, base := range map[int]time.Duration{1: 200 * time.Millisecond, 2: 400 * time.Millisecond, 5: 3200 * time.Millisecond, 20: 30 * time.Second} {
		for range 50 {
			d := DefaultBackoff(attempt)
			assert.GreaterOrEqual(t, d, base-base/5, "attempt %d", attempt)
			assert.LessOrEqual(t, d, base+base/5, "attempt %d", attempt)
		}
	}
}

// TestDailyQuotaDecisionAroundTheReset: 45009 in the first minutes of a
// window is "try again shortly"; later it parks for the next window, spread
// over its first QuotaSpread in the order the events were parked.
func TestDailyQuotaDecisionAroundTheReset(t *testing.T) {
	var p RetryPolicy
	midnight := time.Date(2026, 12, 1, 0, 0, 0, 0, shanghai)
	next := midnight.Add(24 * time.Hour)
	err := wechatErr(45009)

	early := p.Decide(err, wechat.ClassDailyQuota, 1, midnight.Add(3*time.Minute))
	assert.Equal(t, Verdict{Action: ActionPark, Until: midnight.Add(3*time.Minute + QuotaGraceRetry)}, early)

	morning := p.Decide(err, wechat.ClassDailyQuota, 1, midnight.Add(6*time.Hour))
	evening := p.Decide(err, wechat.ClassDailyQuota, 1, midnight.Add(18*time.Hour))
	for _, d := range []Verdict{morning, evening} {
		assert.Equal(t, ActionPark, d.Action)
		assert.True(t, d.Window)
		assert.False(t, d.Until.Before(next))
		assert.True(t, d.Until.Before(next.Add(5*time.Minute)), "%s", d.Until)
	}
	assert.Equal(t, next.Add(75*time.Second), morning.Until, "a quarter of the day: a quarter of the spread")
	assert.True(t, evening.Until.After(morning.Until), "parked later, back later")
}
