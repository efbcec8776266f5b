package waybill

import (
	"errors"
	"time"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/internal/wait"
	"github.com/waybillkit/waybill/wechat"
)

// Action is what the handler does with an event whose WeChat call failed.
type Action int

const (
	// ActionRetry calls again in place after Config.Backoff. Used for
	// transient faults: the event is never dead-lettered for them.
	ActionRetry Action = iota + 1
	// ActionPark defers the event until a later time (the next minute, the
	// next quota window, hours for a waybill WeChat does not know yet).
	// With parking configured the event moves to a delay topic and the
	// partition flows on; without it, the handler waits in place.
	ActionPark
	// ActionDeadLetter publishes the event to the dead-letter topic with its
	// reason and acknowledges it.
	ActionDeadLetter
)

func (a Action) String() string {
	switch a {
	case ActionRetry:
		return "retry"
	case ActionPark:
		return "park"
	case ActionDeadLetter:
		return "dead_letter"
	}
	return "unknown"
}

// Verdict is the handler's verdict on one failed call.
type Verdict struct {
	Action Action
	// Until is when a parked event may run again (ActionPark only).
	Until time.Time
	// Window marks Until as the start of the next quota window, so that
	// parking files the event in the window tier.
	Window bool
	// Reason is set for ActionDeadLetter.
	Reason deadletter.Reason
}

// DecideFunc maps a failed call to a Verdict. attempts counts the failed
// calls of this class for the event, this one included: in this delivery,
// and for not_yet across all deliveries. now is when the answer came, but for
// a daily-quota answer when the call was admitted, so that a 45009 is judged
// in the window its call was counted in.
type DecideFunc func(err error, class wechat.Class, attempts int, now time.Time) Verdict

// RetryPolicy holds the timing the default decision table needs. The zero
// value is usable: see each field.
type RetryPolicy struct {
	// NotYetDelay is how long an event waits after WeChat answered 931023
	// (waybill not known yet). Zero means 1 hour.
	NotYetDelay time.Duration
	// NotYetAttempts bounds the calls made for an event that keeps getting
	// 931023; then it is dead-lettered with ReasonNotYetExhausted. Zero
	// means 24, about a day at the default delay.
	NotYetAttempts int
	// TokenAttempts bounds the calls that end in a token error after the
	// client's own refresh and retry; then the event is dead-lettered with
	// ReasonConfiguration: a token WeChat keeps rejecting means another
	// system refreshes it (cgi-bin/token invalidates the previous one) or
	// the credentials are wrong, and refetching without end would burn the
	// token endpoint's own daily quota. Zero means 3.
	TokenAttempts int
	// BreakerWait is how long an event waits when its appid's breaker is
	// open. Zero means 5 s.
	BreakerWait time.Duration
	// QuotaReset returns the start of the next daily quota window after now.
	// Nil means the next 00:00 in Asia/Shanghai, WeChat's working assumption.
	QuotaReset func(now time.Time) time.Time
	// QuotaWindowStart returns the start of the quota window that holds now.
	// Nil means QuotaReset(now - 24h), exact for days of 24 hours; the
	// Handler sets it from its Limiter, whose zone may have 23- and 25-hour
	// days.
	QuotaWindowStart func(now time.Time) time.Time
	// QuotaGrace is how long after a reset WeChat's own reset may lag: a
	// 45009 on a call admitted then parks the event for a minute
	// (QuotaGraceRetry) instead of until the next window, and does not mark
	// the new day spent. Zero means 10 min.
	QuotaGrace time.Duration
	// QuotaSpread spreads the events parked for the next window over its
	// first minutes instead of releasing them all at the reset: an event
	// parked at a fraction f of the day returns at reset + f × QuotaSpread,
	// which keeps the window tier's due order equal to its arrival order.
	// Zero means 5 min.
	QuotaSpread time.Duration
}

// QuotaGraceRetry is how long an event waits after a 45009 in the first
// minutes of a window (RetryPolicy.QuotaGrace).
const QuotaGraceRetry = time.Minute

func (p *RetryPolicy) setDefaults() {
	if p.NotYetDelay == 0 {
		p.NotYetDelay = time.Hour
	}
	if p.NotYetAttempts == 0 {
		p.NotYetAttempts = 24
	}
	if p.TokenAttempts == 0 {
		p.TokenAttempts = 3
	}
	if p.BreakerWait == 0 {
		p.BreakerWait = 5 * time.Second
	}
	if p.QuotaReset == nil {
		p.QuotaReset = nextShanghaiMidnight
	}
	if p.QuotaWindowStart == nil {
		reset := p.QuotaReset
		p.QuotaWindowStart = func(now time.Time) time.Time { return reset(now.Add(-24 * time.Hour)) }
	}
	if p.QuotaGrace == 0 {
		p.QuotaGrace = 10 * time.Minute
	}
	if p.QuotaSpread == 0 {
		p.QuotaSpread = 5 * time.Minute
	}
}

// windowStart is the start of the daily window that holds now.
func (p RetryPolicy) windowStart(now time.Time) time.Time {
	p.setDefaults()
	return p.QuotaWindowStart(now)
}

// inResetGrace reports whether t lies in the first QuotaGrace of its window.
func (p RetryPolicy) inResetGrace(t time.Time) bool {
	p.setDefaults()
	return t.Sub(p.windowStart(t)) < p.QuotaGrace
}

// windowDue is when an event parked at now, in the window that began at
// start, returns in the window that begins at reset: reset plus its share of
// QuotaSpread. The share grows with the time of day, so events parked later
// return later.
func (p RetryPolicy) windowDue(now, start, reset time.Time) time.Time {
	p.setDefaults()
	f := 0.0
	if length := reset.Sub(start); length > 0 {
		f = float64(now.Sub(start)) / float64(length)
	}
	f = min(max(f, 0), 1)
	return reset.Add(time.Duration(f * float64(p.QuotaSpread)))
}

// shanghai is UTC+8 all year (China has no daylight saving time), so a fixed
// zone is exact and needs no tzdata on the machine.
var shanghai = time.FixedZone("CST", 8*3600)

// nextShanghaiMidnight returns the first 00:00 China Standard Time after now.
func nextShanghaiMidnight(now time.Time) time.Time {
	t := now.In(shanghai)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, shanghai)
}

// Decide is the default decision table, one row per wechat.Class:
//
//	transient            → retry with backoff (never dead-lettered)
//	token                → retry with backoff; configuration after TokenAttempts
//	breaker open         → park for BreakerWait
//	minute_rate (45011)  → park until the next minute
//	daily_quota (45009)  → park until the quota window resets (spread over
//	                       its first QuotaSpread); within QuotaGrace of a
//	                       reset, park for QuotaGraceRetry
//	not_yet (931023)     → park for NotYetDelay, dead-letter after NotYetAttempts
//	permanent            → dead-letter, reason permanent
//	configuration        → dead-letter, reason configuration
func (p RetryPolicy) Decide(err error, class wechat.Class, attempts int, now time.Time) Verdict {
	p.setDefaults()
	if errors.Is(err, ErrBreakerOpen) {
		return Verdict{Action: ActionPark, Until: now.Add(p.BreakerWait)}
	}
	switch class {
	case wechat.ClassMinuteRate:
		return Verdict{Action: ActionPark, Until: now.Truncate(time.Minute).Add(time.Minute)}
	case wechat.ClassDailyQuota:
		if now.Sub(p.windowStart(now)) < p.QuotaGrace {
			// WeChat's own reset may lag ours: try again shortly rather
			// than lose the new day.
			return Verdict{Action: ActionPark, Until: now.Add(QuotaGraceRetry)}
		}
		return Verdict{Action: ActionPark, Until: p.windowDue(now, p.windowStart(now), p.QuotaReset(now)), Window: true}
	case wechat.ClassNotYet:
		if attempts >= p.NotYetAttempts {
			return Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonNotYetExhausted}
		}
		return Verdict{Action: ActionPark, Until: now.Add(p.NotYetDelay)}
	case wechat.ClassPermanent:
		return Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonPermanent}
	case wechat.ClassConfiguration:
		return Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonConfiguration}
	case wechat.ClassToken:
		if attempts >= p.TokenAttempts {
			return Verdict{Action: ActionDeadLetter, Reason: deadletter.ReasonConfiguration}
		}
		return Verdict{Action: ActionRetry}
	default:
		// Transient and anything unknown: an event that could succeed later
		// is never dead-lettered.
		return Verdict{Action: ActionRetry}
	}
}

// quotaEffect is what a failed call does to the limiter's count, next to
// the table above that decides the event's fate, so that one place says
// what each answer means:
//
//	breaker open, never sent (wechat.ErrNotSent),
//	HTTP error without errcode, token, 45011  → refund: WeChat did not count it
//	45009                                     → refund; the appid's day may be spent
//	anything else                             → counted
//
// Whether the day is spent takes WeChat's quota report and the reset grace
// (delivery.settleQuota).
func quotaEffect(callErr error, class wechat.Class) (refund, daySpent bool) {
	switch {
	case errors.Is(callErr, ErrBreakerOpen), errors.Is(callErr, wechat.ErrNotSent), httpFailure(callErr),
		class == wechat.ClassToken, class == wechat.ClassMinuteRate:
		return true, false
	case class == wechat.ClassDailyQuota:
		return true, true
	}
	return false, false
}

// httpFailure reports an HTTP error status without a WeChat errcode.
func httpFailure(err error) bool {
	var we *wechat.Error
	return errors.As(err, &we) && we.HTTPStatus != 0 && we.Code == 0
}

// DefaultBackoff is exponential from 200 ms, capped at 30 s, with ±20 %
// jitter so that many handlers do not retry in lockstep.
func DefaultBackoff(attempt int) time.Duration { return wait.Backoff(attempt) }
