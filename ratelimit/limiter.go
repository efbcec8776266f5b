// Package ratelimit keeps WeChat calls within their quotas: a daily quota per
// appid, a daily quota per openid, and a smooth per-appid rate, all decided
// together so that a denied call consumes nothing.
//
// Daily windows reset at a wall-clock time of day in a time zone (default
// 00:00 Asia/Shanghai), neither at UTC midnight nor 24 hours after first use.
// The smooth rate is a GCRA, the token bucket of golang.org/x/time/rate in
// a form one Redis script can keep.
//
// Like x/time/rate's AllowN(t, n), every decision takes the current time as
// an argument, so tests need no fake clock. A MemoryStore limits one process;
// a RedisStore shares the counters between processes with one atomic script
// per decision.
//
// A caller that can wait for the smooth rate reserves its turn, as with
// x/time/rate's ReserveN, rather than sleeping until RetryAt and asking again:
// ReserveN counts the call at once when its token comes within maxWait and
// tells, in Decision.At, when it may go. Waiters so get distinct, evenly
// spaced turns instead of waking together to compete for one token, and each
// knows before it sleeps whether its turn fits its own time budget. Wait does
// this with one store round trip.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"time"
)

// Reason says which limit denied a call.
type Reason uint8

const (
	// ReasonNone is the reason of an allowed call.
	ReasonNone Reason = iota
	// ReasonAppDaily: the appid's daily quota is spent, counted here or
	// reported by WeChat (see ExhaustApp). Retry at the next window.
	ReasonAppDaily
	// ReasonUserDaily: the openid's daily quota is spent. Retry at the next
	// window.
	ReasonUserDaily
	// ReasonRate: the appid's smooth rate has no token now. Retry when the
	// next token comes, usually within a second.
	ReasonRate
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonAppDaily:
		return "app_daily"
	case ReasonUserDaily:
		return "user_daily"
	case ReasonRate:
		return "rate"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Decision is the answer to Allow and Reserve.
type Decision struct {
	// Allowed reports whether the call may go, at At. When it is true the
	// call has been counted; when false nothing was.
	Allowed bool
	// Reason names the limit that denied the call. When several deny it,
	// the daily ones win (they last longest), the appid's before the
	// openid's.
	Reason Reason
	// RetryAt is, when denied, the earliest time the same call can be
	// allowed by AllowN: WindowEnd for the daily reasons, the next token's
	// time for ReasonRate (for ReserveN too: the reservation's maxWait does
	// not move it). Zero when allowed.
	RetryAt time.Time
	// At is, when allowed, when the call may go. It is the now passed to
	// AllowN or ReserveN, unchanged, when a token was free at now (always
	// so for AllowN, and with an unlimited rate); otherwise ReserveN
	// reserved a later token and At is now plus the wait, a whole number
	// of microseconds no longer than maxWait. Zero when denied.
	At time.Time
	// AppRemaining and UserRemaining are the calls left in the window after
	// this decision, or -1 when that limit is unlimited (UserRemaining is
	// -1 too when the call names no openid).
	AppRemaining, UserRemaining int64
	// WindowEnd is when the current daily window ends and the daily counts
	// start again from zero.
	WindowEnd time.Time

	// What Refund needs to give the call back.
	appid, openid, window string
	n                     int64
	userCounted           bool
}

// Store keeps the counters of a Limiter. It is implemented by MemoryStore
// and RedisStore only; its methods are internal so that the decision logic
// can change without breaking callers.
type Store interface {
	take(ctx context.Context, q query) (outcome, error)
	refund(ctx context.Context, appid, openid, window string, n int64) error
	exhaust(ctx context.Context, appid, window string, now, expire int64) error
}

// query is one decision, resolved into plain numbers so that the memory
// store and the Redis script compute exactly the same thing.
type query struct {
	appid, openid, window string
	n                     int64
	now                   int64 // microseconds since the Unix epoch
	expire                int64 // when the window's counters may go: its end plus windowGrace (µs)
	appQuota, userQuota   int64 // -1: unlimited; userQuota is -1 without an openid
	interval, burst       int64 // GCRA: microseconds per call (0: unlimited), bucket size
	maxWait               int64 // µs a reserved call may wait for its token (0: AllowN)
}

// outcome is a store's answer to a query.
type outcome struct {
	allowed bool
	reason  Reason
	// retry is the next token's time in microseconds, for ReasonRate.
	retry int64
	// at is, when allowed, when the call may go (µs): now, or its reserved
	// token's time.
	at int64
	// app and user are the window's counts after the decision.
	app, user int64
	// exhausted: ExhaustApp closed the window.
	exhausted bool
}

// windowGrace is how long a window's counters outlive its end. Callers'
// clocks differ a little: a decision stamped just before the reset may
// arrive after a faster caller's first decision of the next window, and must
// still find the old window's counts rather than a fresh quota.
const windowGrace = 5 * time.Minute

// ErrExceedsCapacity is returned by AllowN and ReserveN when n could never be
// allowed: it exceeds the burst or a daily quota.
var ErrExceedsCapacity = errors.New("ratelimit: n exceeds a limit's capacity")

// A Limiter decides whether a WeChat call may go now. It is safe for
// simultaneous use by multiple goroutines; limiters of several processes
// sharing a RedisStore (same client address and key prefix) share their
// counts.
type Limiter struct {
	store    Store
	clock    clock
	defaults Limits
	apps     map[string]Limits
}

// New returns a Limiter configured by cfg.
func New(cfg Config) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		cfg.Store = NewMemoryStore()
	}
	if cfg.Location == nil {
		cfg.Location = defaultLocation()
	}
	return &Limiter{
		store:    cfg.Store,
		clock:    newClock(cfg.Location, cfg.ResetAt),
		defaults: cfg.Defaults,
		apps:     maps.Clone(cfg.Apps),
	}, nil
}

// LimitsFor returns the limits in force for appid, with every default
// filled in. Unlimited daily quotas are -1; an unlimited Rate is +Inf with
// Burst 0.
func (l *Limiter) LimitsFor(appid string) Limits {
	return l.apps[appid].inherit(l.defaults).resolved()
}

// Window returns the daily window that holds now: the last reset at or
// before now and the next one after it, in the configured zone.
func (l *Limiter) Window(now time.Time) (start, end time.Time) {
	start, end, _ = l.clock.window(now)
	return start, end
}

// Allow is AllowN(ctx, appid, openid, now, 1).
func (l *Limiter) Allow(ctx context.Context, appid, openid string, now time.Time) (Decision, error) {
	return l.AllowN(ctx, appid, openid, now, 1)
}

// AllowN decides whether n calls for appid on behalf of openid may happen at
// now, against the appid's daily quota, the openid's daily quota and the
// appid's smooth rate at once. An allowed decision counts the calls in all
// three; a denied one counts nothing and tells when to come back. An empty
// openid skips the per-user quota (calls not made for a buyer).
//
// AllowN is ReserveN with maxWait 0: an allowed decision's At is now.
//
// An error means the store failed (the decision is then a denial with no
// RetryAt; whether to call WeChat anyway is the caller's choice), or that
// the arguments are invalid: an empty appid, n < 1, or n beyond a limit's
// capacity (ErrExceedsCapacity).
func (l *Limiter) AllowN(ctx context.Context, appid, openid string, now time.Time, n int) (Decision, error) {
	return l.reserve(ctx, "AllowN", appid, openid, now, n, 0)
}

// Reserve is ReserveN(ctx, appid, openid, now, 1, maxWait).
func (l *Limiter) Reserve(ctx context.Context, appid, openid string, now time.Time, maxWait time.Duration) (Decision, error) {
	return l.reserve(ctx, "ReserveN", appid, openid, now, 1, maxWait)
}

// ReserveN is AllowN for a caller that can wait up to maxWait for the smooth
// rate. When the appid's next n tokens come within maxWait of now, the calls
// are counted at once, in the daily quotas and the rate together, and the
// decision is allowed with At the time they may go; later reservations get
// later tokens, so no two callers are given the same one. When the tokens
// come later than that, nothing is counted and the decision is the
// ReasonRate denial AllowN would give. Daily-quota denials are AllowN's.
//
// The calls count in the daily window that holds now, even when At falls
// in the next one. Refund gives a reservation's daily counts back but not
// its token: the reserved turn stays taken, as a spent token does.
//
// maxWait is used in whole microseconds, and at most about 142 years less
// the bucket's depth (so that the arithmetic stays exact in Redis's Lua).
// A negative maxWait is an error; zero makes ReserveN exactly AllowN.
func (l *Limiter) ReserveN(ctx context.Context, appid, openid string, now time.Time, n int, maxWait time.Duration) (Decision, error) {
	return l.reserve(ctx, "ReserveN", appid, openid, now, n, maxWait)
}

// maxDepth bounds, in microseconds, the bucket's depth plus maxWait: how far
// past now the GCRA's state may go. validate holds the depth alone to it.
const maxDepth = 1 << 52

// reserve is AllowN and ReserveN; op names the caller in errors.
func (l *Limiter) reserve(ctx context.Context, op, appid, openid string, now time.Time, n int, maxWait time.Duration) (Decision, error) {
	if appid == "" {
		return Decision{}, errors.New("ratelimit: empty appid")
	}
	if n < 1 {
		return Decision{}, fmt.Errorf("ratelimit: %s(n=%d): n must be at least 1", op, n)
	}
	if maxWait < 0 {
		return Decision{}, fmt.Errorf("ratelimit: %s(maxWait=%v): maxWait must not be negative", op, maxWait)
	}
	lim := l.LimitsFor(appid)
	_, end, window := l.clock.window(now)
	q := query{
		appid: appid, openid: openid, window: window, n: int64(n),
		now: now.UnixMicro(), expire: end.Add(windowGrace).UnixMicro(),
		appQuota: lim.AppDaily, userQuota: lim.UserDaily,
		interval: lim.intervalMicros(), burst: int64(lim.Burst),
	}
	if openid == "" {
		q.userQuota = -1
	}
	if (q.interval > 0 && q.n > q.burst) || (q.appQuota >= 0 && q.n > q.appQuota) || (q.userQuota >= 0 && q.n > q.userQuota) {
		return Decision{}, fmt.Errorf("ratelimit: %s(n=%d) for appid %s (limits %+v): %w", op, n, appid, lim, ErrExceedsCapacity)
	}
	if q.interval > 0 {
		q.maxWait = min(maxWait.Microseconds(), maxDepth-q.burst*q.interval)
	}
	o, err := l.store.take(ctx, q)
	if err != nil {
		return Decision{}, fmt.Errorf("ratelimit: deciding for appid %s: %w", appid, err)
	}
	d := Decision{
		Allowed:       o.allowed,
		Reason:        o.reason,
		AppRemaining:  remaining(q.appQuota, o.app),
		UserRemaining: remaining(q.userQuota, o.user),
		WindowEnd:     end,
		appid:         appid,
		openid:        openid,
		window:        window,
		n:             q.n,
		userCounted:   q.userQuota >= 0,
	}
	if o.allowed {
		// now plus the wait rather than time.UnixMicro(o.at): no wait gives
		// now itself, and At keeps now's zone and monotonic reading.
		d.At = now.Add(time.Duration(o.at-q.now) * time.Microsecond)
	}
	if o.exhausted {
		d.AppRemaining = 0
	}
	switch o.reason {
	case ReasonAppDaily, ReasonUserDaily:
		d.RetryAt = end
	case ReasonRate:
		d.RetryAt = time.UnixMicro(o.retry).In(l.clock.loc)
	}
	return d, nil
}

// remaining is quota minus count, never negative, or -1 when unlimited.
func remaining(quota, count int64) int64 {
	if quota < 0 {
		return -1
	}
	return max(0, quota-count)
}

// Refund is RefundN(ctx, d, n) for all the calls d allowed.
func (l *Limiter) Refund(ctx context.Context, d Decision) error {
	return l.RefundN(ctx, d, int(d.n))
}

// RefundN gives back n of the calls that d allowed to the daily quotas of
// their appid and openid, for calls that WeChat rejected without counting
// them, or that were never sent. It does not give back the smooth-rate
// token: the moment is past, and a call that reached WeChat still weighed on
// its per-minute limit. Nor does it for a reservation whose At has not come:
// that turn stays taken, and later reservations keep theirs. Refunding a
// denied decision does nothing; refunding after d's window ended gives back
// to that ended window, which changes nothing. Refunding the same call
// twice is the caller's error and gives back too much.
func (l *Limiter) RefundN(ctx context.Context, d Decision, n int) error {
	if !d.Allowed {
		return nil
	}
	if n < 1 || int64(n) > d.n {
		return fmt.Errorf("ratelimit: RefundN(n=%d) of a decision that allowed %d", n, d.n)
	}
	openid := d.openid
	if !d.userCounted {
		openid = ""
	}
	if err := l.store.refund(ctx, d.appid, openid, d.window, int64(n)); err != nil {
		return fmt.Errorf("ratelimit: refunding appid %s: %w", d.appid, err)
	}
	return nil
}

// ExhaustApp records that appid's daily quota is spent whatever the local
// count says, as WeChat's errcode 45009 reports: until the window that holds
// now ends, every decision for appid is a ReasonAppDaily denial.
func (l *Limiter) ExhaustApp(ctx context.Context, appid string, now time.Time) error {
	if appid == "" {
		return errors.New("ratelimit: empty appid")
	}
	_, end, window := l.clock.window(now)
	if err := l.store.exhaust(ctx, appid, window, now.UnixMicro(), end.Add(windowGrace).UnixMicro()); err != nil {
		return fmt.Errorf("ratelimit: exhausting appid %s: %w", appid, err)
	}
	return nil
}

// Wait blocks until the appid's smooth rate lets one call through, then
// returns its allowed Decision. It reserves the call's turn with Reserve (one
// store round trip) and sleeps until At, so that waiters queue in order
// rather than race for each token. It waits only for tokens: when a daily
// quota denies the call, waiting would take hours, so Wait returns that
// denial at once for the caller to park the work until RetryAt.
//
// When ctx has a deadline, Wait reserves only a turn at or before it: when
// the next token comes later, it returns the ReasonRate denial and an error
// wrapping context.DeadlineExceeded at once, having counted nothing. When
// ctx ends during the sleep, Wait refunds the call's daily counts and
// returns ctx's error; the reserved token is not given back (see RefundN),
// so the callers behind keep their turns. It reads the time with time.Now.
func (l *Limiter) Wait(ctx context.Context, appid, openid string) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, err
	}
	now := time.Now()
	maxWait := time.Duration(math.MaxInt64) // ReserveN caps it
	if deadline, ok := ctx.Deadline(); ok {
		if maxWait = deadline.Sub(now); maxWait < 0 {
			// Past the deadline though ctx has not noticed yet.
			return Decision{}, context.DeadlineExceeded
		}
	}
	d, err := l.Reserve(ctx, appid, openid, now, maxWait)
	if err != nil || (!d.Allowed && d.Reason != ReasonRate) {
		return d, err
	}
	if !d.Allowed {
		return d, fmt.Errorf("ratelimit: next token for appid %s at %s is after the context deadline: %w",
			appid, d.RetryAt.Format(time.RFC3339Nano), context.DeadlineExceeded)
	}
	// Until, not the wait from now: the round trip has already used part of
	// it, and At carries now's monotonic reading.
	wait := time.Until(d.At)
	if wait <= 0 {
		return d, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return d, nil
	case <-ctx.Done():
		// ctx is done, yet the refund must still reach the store.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refundTimeout)
		defer cancel()
		if rerr := l.Refund(rctx, d); rerr != nil {
			return Decision{}, errors.Join(ctx.Err(), rerr)
		}
		return Decision{}, ctx.Err()
	}
}

// refundTimeout bounds the refund of a Wait whose ctx ended.
const refundTimeout = 5 * time.Second
