// Package ratelimit keeps WeChat calls within their quotas: a daily quota per
// appid, a daily quota per openid, and a smooth per-appid rate, all decided
// together so that a denied call consumes nothing. Package waybill imports
// it (Config.Limiter and GoodsLimiter) to decide each call before it reaches
// WeChat, cmd/waybill to configure those limiters; so can any program that
// calls WeChat's waybill API itself.
//
// Daily windows reset at a wall-clock time of day in a time zone (default
// 00:00 Asia/Shanghai), neither at UTC midnight nor 24 hours after first use.
// The smooth rate is a GCRA, the token bucket of golang.org/x/time/rate in
// a form one Redis script can keep.
//
// Like x/time/rate's AllowN(t, n), every decision takes the current time as
// an argument, so tests need no fake clock. A MemoryStore limits one process;
// the Store of package ratelimit/redis shares the counters between processes
// with one atomic script per decision. This package does not import a Redis
// client: a program that limits one process links none.
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
	"sync/atomic"
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

// Store keeps the counters of a Limiter: MemoryStore in this process, the
// Store of package ratelimit/redis in Redis. The Limiter resolves each call
// into plain numbers (a Query) and the store applies them, so that every
// store decides exactly alike; MemoryStore.Take is the reference.
//
// All times are microseconds since the Unix epoch, taken from the time the
// caller passed to the Limiter, never from the store's own clock. Counters
// are kept per appid and window (Query.Window), and per openid within them;
// the smooth rate's state, the GCRA's theoretical arrival time (TAT), per
// appid across windows.
//
// A Store must be safe for simultaneous use by multiple goroutines, and
// Limiters (in one process or many) that share a store's counters share
// their limits. Each method is atomic with respect to every other call on
// the same appid: no other call may come between its reads and its writes.
// An error means the store could not answer; the Limiter returns it wrapped
// (with a denial, for Take), so errors.Is still finds the store's own.
type Store interface {
	// Take decides q and, when it allows it, counts it. In this order:
	//
	//  1. When the window is exhausted (see Exhaust), or AppQuota >= 0 and
	//     the appid's count plus N exceeds it: deny, ReasonAppDaily.
	//  2. When UserQuota >= 0 and the openid's count plus N exceeds it:
	//     deny, ReasonUserDaily.
	//  3. When Interval > 0: tat = max(TAT, Now) + N*Interval. When
	//     tat-Now > Burst*Interval+MaxWait: deny, ReasonRate, with Retry =
	//     tat - Burst*Interval. Otherwise the call may go At = max(Now,
	//     tat-Burst*Interval), and TAT becomes tat.
	//  4. Allow: add N to the appid's count and, when UserQuota >= 0, to
	//     the openid's; At is Now when Interval is 0.
	//
	// A denial changes nothing. The window's counters must live at least
	// until Expire, the TAT at least until it is past (after that, a
	// missing TAT reads as 0). With UserQuota -1 the store neither reads
	// nor writes an openid counter.
	Take(ctx context.Context, q Query) (Outcome, error)
	// Refund lowers the counts of appid in window, and of openid within it
	// unless openid is empty, by n each, never below zero. It leaves alone
	// a window the store no longer holds, the exhausted flag and the TAT.
	Refund(ctx context.Context, appid, openid, window string, n int64) error
	// Exhaust marks appid's window exhausted until at least expire, so that
	// Take denies it with ReasonAppDaily and Outcome.Exhausted. now is the
	// current time; both are microseconds since the Unix epoch.
	Exhaust(ctx context.Context, appid, window string, now, expire int64) error
}

// Query is one decision for Store.Take, resolved by the Limiter into plain
// numbers. The Limiter guarantees N >= 1; N <= Burst when Interval > 0; N
// within each quota that is not -1; and Burst*Interval+MaxWait <= 2^52, so
// that the arithmetic stays exact in a float64 (Redis's Lua) as in an int64.
type Query struct {
	// AppID and OpenID name the caller's counters; OpenID is empty when the
	// call is made for no buyer.
	AppID, OpenID string
	// Window is the id of the daily window that holds Now: the local date
	// it began, YYYYMMDD.
	Window string
	// N is how many calls to decide together.
	N int64
	// Now is the decision's time, in microseconds since the Unix epoch.
	Now int64
	// Expire is when the window's counters may go, in microseconds since
	// the Unix epoch: the window's end plus a grace of five minutes, so
	// that callers whose clocks run a little behind still find them.
	Expire int64
	// AppQuota and UserQuota are the daily quotas of the appid and of the
	// openid; -1 means unlimited. UserQuota is -1 too without an OpenID.
	AppQuota, UserQuota int64
	// Interval is the smooth rate's emission interval, in microseconds per
	// call; 0 means the rate is unlimited, and Burst and MaxWait are then
	// 0 and ignored.
	Interval int64
	// Burst is the size of the bucket: how many calls may go at once after
	// the appid was idle.
	Burst int64
	// MaxWait is how long, in microseconds, a reserved call may wait for
	// its token; 0 for AllowN, which takes only a token free at Now.
	MaxWait int64
}

// Outcome is a Store's answer to a Query.
type Outcome struct {
	// Allowed reports whether the calls were allowed and counted.
	Allowed bool
	// Reason names the limit that denied them; ReasonNone when allowed.
	Reason Reason
	// Retry is, for ReasonRate, when the calls' tokens come, in
	// microseconds since the Unix epoch; 0 otherwise.
	Retry int64
	// At is, when allowed, when the calls may go, in microseconds since the
	// Unix epoch: Query.Now, or the time of their reserved tokens; 0 when
	// denied.
	At int64
	// App and User are the window's counts of the appid and the openid
	// after the decision (as read, when denied); User is 0 when
	// Query.UserQuota is -1.
	App, User int64
	// Exhausted reports that Exhaust closed the window.
	Exhausted bool
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
// that share a Redis store (ratelimit/redis: same server and key prefix)
// share their counts.
type Limiter struct {
	store  Store
	clock  clock
	limits atomic.Pointer[limitSet] // swapped whole by SetLimits
}

// limitSet is the limits a Limiter applies, replaced as one.
type limitSet struct {
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
	l := &Limiter{store: cfg.Store, clock: newClock(cfg.Location, cfg.ResetAt)}
	l.limits.Store(&limitSet{defaults: cfg.Defaults, apps: maps.Clone(cfg.Apps)})
	return l, nil
}

// SetLimits replaces the default and per-appid limits, as Config.Defaults
// and Config.Apps, for every decision from now on, so that a running
// service takes new merchants and changed limits without a restart.
// Counts already made stay: a lower daily quota applies to the calls the
// window has counted so far. Invalid limits change nothing and are
// reported as Config.Validate reports them. Safe for concurrent use with
// every other method.
func (l *Limiter) SetLimits(defaults Limits, apps map[string]Limits) error {
	if err := (Config{Defaults: defaults, Apps: apps}).Validate(); err != nil {
		return err
	}
	l.limits.Store(&limitSet{defaults: defaults, apps: maps.Clone(apps)})
	return nil
}

// LimitsFor returns the limits in force for appid, with every default
// filled in. Unlimited daily quotas are -1; an unlimited Rate is +Inf with
// Burst 0.
func (l *Limiter) LimitsFor(appid string) Limits {
	ls := l.limits.Load()
	return ls.apps[appid].inherit(ls.defaults).resolved()
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
// the bucket's depth (so that the arithmetic stays exact in a store that
// computes in doubles, as Redis's Lua does).
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
	q := Query{
		AppID: appid, OpenID: openid, Window: window, N: int64(n),
		Now: now.UnixMicro(), Expire: end.Add(windowGrace).UnixMicro(),
		AppQuota: lim.AppDaily, UserQuota: lim.UserDaily,
		Interval: lim.intervalMicros(), Burst: int64(lim.Burst),
	}
	if openid == "" {
		q.UserQuota = -1
	}
	if (q.Interval > 0 && q.N > q.Burst) || (q.AppQuota >= 0 && q.N > q.AppQuota) || (q.UserQuota >= 0 && q.N > q.UserQuota) {
		return Decision{}, fmt.Errorf("ratelimit: %s(n=%d) for appid %s (limits %+v): %w", op, n, appid, lim, ErrExceedsCapacity)
	}
	if q.Interval > 0 {
		q.MaxWait = min(maxWait.Microseconds(), maxDepth-q.Burst*q.Interval)
	}
	o, err := l.store.Take(ctx, q)
	if err != nil {
		return Decision{}, fmt.Errorf("ratelimit: deciding for appid %s: %w", appid, err)
	}
	d := Decision{
		Allowed:       o.Allowed,
		Reason:        o.Reason,
		AppRemaining:  remaining(q.AppQuota, o.App),
		UserRemaining: remaining(q.UserQuota, o.User),
		WindowEnd:     end,
		appid:         appid,
		openid:        openid,
		window:        window,
		n:             q.N,
		userCounted:   q.UserQuota >= 0,
	}
	if o.Allowed {
		// now plus the wait rather than time.UnixMicro(o.At): no wait gives
		// now itself, and At keeps now's zone and monotonic reading.
		d.At = now.Add(time.Duration(o.At-q.Now) * time.Microsecond)
	}
	if o.Exhausted {
		d.AppRemaining = 0
	}
	switch o.Reason {
	case ReasonAppDaily, ReasonUserDaily:
		d.RetryAt = end
	case ReasonRate:
		d.RetryAt = time.UnixMicro(o.Retry).In(l.clock.loc)
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
	if err := l.store.Refund(ctx, d.appid, openid, d.window, int64(n)); err != nil {
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
	if err := l.store.Exhaust(ctx, appid, window, now.UnixMicro(), end.Add(windowGrace).UnixMicro()); err != nil {
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
