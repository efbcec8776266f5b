package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Package defaults. WeChat documents the two daily quotas of the query
// plugin; it does not publish the per-minute limit behind errcode 45011, so
// DefaultRate is an assumption: fast enough to drain a day's quota in about
// an hour and a half, slow enough not to spend it in one burst.
const (
	// DefaultAppDaily is WeChat's daily quota for one appid.
	DefaultAppDaily = 100_000
	// DefaultUserDaily is WeChat's daily quota for one openid.
	DefaultUserDaily = 100
	// DefaultRate is the smooth per-appid rate, in calls per second.
	DefaultRate = 20
	// DefaultLocation is the zone of the daily reset: WeChat's quotas are
	// taken to reset at midnight China Standard Time.
	DefaultLocation = "Asia/Shanghai"
)

// Limits are the quotas and the smooth rate of one appid. In each field, zero
// means "inherit": an appid's Limits fall back field by field to
// Config.Defaults, whose zero fields fall back to the package defaults.
type Limits struct {
	// AppDaily is how many calls the appid may make in one daily window.
	// Zero inherits (DefaultAppDaily); negative means no daily limit.
	AppDaily int64
	// UserDaily is how many calls one openid of the appid may make in one
	// daily window. Zero inherits (DefaultUserDaily); negative means no
	// per-user limit.
	UserDaily int64
	// Rate is the smooth per-appid rate in calls per second (fractions
	// allowed: 0.5 is one call every two seconds). Zero inherits
	// (DefaultRate); negative or +Inf means no smooth limit. The rate's
	// resolution is one call per microsecond; below 1e-9 it is invalid.
	Rate float64
	// Burst is how many calls may go at once after the appid was idle.
	// Zero inherits; when nothing sets it, it is Rate rounded up (one
	// second's worth), at least 1. Ignored when Rate is unlimited.
	Burst int
}

// inherit fills l's zero fields from d.
func (l Limits) inherit(d Limits) Limits {
	if l.AppDaily == 0 {
		l.AppDaily = d.AppDaily
	}
	if l.UserDaily == 0 {
		l.UserDaily = d.UserDaily
	}
	if l.Rate == 0 {
		l.Rate = d.Rate
	}
	if l.Burst == 0 {
		l.Burst = d.Burst
	}
	return l
}

// resolved returns l with every inherited zero replaced by the package
// default and every "unlimited" normalized to -1 (Rate: +Inf, Burst: 0).
func (l Limits) resolved() Limits {
	l = l.inherit(Limits{AppDaily: DefaultAppDaily, UserDaily: DefaultUserDaily, Rate: DefaultRate})
	l.AppDaily = max(l.AppDaily, -1)
	l.UserDaily = max(l.UserDaily, -1)
	if l.Rate < 0 || math.IsInf(l.Rate, 1) {
		l.Rate, l.Burst = math.Inf(1), 0
	} else if l.Burst == 0 {
		l.Burst = max(1, int(math.Ceil(l.Rate)))
	}
	return l
}

// validate checks resolved limits.
func (l Limits) validate() error {
	switch {
	case math.IsNaN(l.Rate):
		return errors.New("Rate is NaN")
	case math.IsInf(l.Rate, 1):
		return nil
	case l.Rate < 1e-9:
		return fmt.Errorf("Rate %g is below 1e-9 calls per second", l.Rate)
	case l.Burst < 0:
		return fmt.Errorf("Burst %d is negative", l.Burst)
	case float64(l.intervalMicros())*float64(l.Burst) > 1<<52:
		// The bucket's depth in microseconds must stay exact in a store
		// that computes in doubles, as Redis's Lua does.
		return fmt.Errorf("Burst %d at Rate %g makes a bucket over a century deep", l.Burst, l.Rate)
	}
	return nil
}

// intervalMicros is the GCRA emission interval: microseconds per call, or 0
// when the rate is unlimited.
func (l Limits) intervalMicros() int64 {
	if math.IsInf(l.Rate, 1) {
		return 0
	}
	return max(1, int64(math.Round(1e6/l.Rate)))
}

// Config configures a Limiter. The zero value is ready to use: an in-memory
// store, WeChat's quotas, DefaultRate, and windows that reset at 00:00
// Asia/Shanghai.
type Config struct {
	// Store keeps the counters. Nil means a new MemoryStore, which limits
	// one process only; use the Store of package ratelimit/redis when
	// several processes share an appid.
	Store Store
	// Defaults apply to every appid; zero fields take the package defaults.
	Defaults Limits
	// Apps overrides Defaults for the appids it names, field by field (a
	// zero field inherits from Defaults). New copies the map.
	Apps map[string]Limits
	// Location is the zone in which ResetAt is read. Nil means
	// Asia/Shanghai; when the system has no time zone database that becomes
	// a fixed UTC+8 zone, which is the same thing (China has no daylight
	// saving time). A program that names other zones and may run without a
	// zone database should import time/tzdata.
	Location *time.Location
	// ResetAt is the wall-clock time of day, as the time since midnight, at
	// which the daily windows begin. Zero means 00:00. It must be in
	// [0, 24h). On a day when that wall-clock time does not exist (a
	// daylight saving gap), the window begins where time.Date puts it.
	ResetAt time.Duration
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	if c.ResetAt < 0 || c.ResetAt >= 24*time.Hour {
		return fmt.Errorf("ratelimit: ResetAt %v is outside [0, 24h)", c.ResetAt)
	}
	if err := c.Defaults.resolved().validate(); err != nil {
		return fmt.Errorf("ratelimit: Defaults: %w", err)
	}
	for appid, l := range c.Apps {
		if err := l.inherit(c.Defaults).resolved().validate(); err != nil {
			return fmt.Errorf("ratelimit: Apps[%q]: %w", appid, err)
		}
	}
	return nil
}

// loadLocation is time.LoadLocation; tests replace it to simulate a machine
// without a zone database.
var loadLocation = time.LoadLocation

// defaultLocation returns Asia/Shanghai, or the equivalent fixed zone when no
// zone database is available.
func defaultLocation() *time.Location {
	loc, err := loadLocation(DefaultLocation)
	if err != nil {
		return time.FixedZone("CST", 8*60*60)
	}
	return loc
}

// clock is the daily reset schedule.
type clock struct {
	loc     *time.Location
	resetAt time.Duration
	// last caches the most recent window: nearly every decision falls in
	// it, and computing one takes three time.Date calls.
	last *atomic.Pointer[cachedWindow]
}

type cachedWindow struct {
	start, end time.Time
	id         string
}

func newClock(loc *time.Location, resetAt time.Duration) clock {
	return clock{loc: loc, resetAt: resetAt, last: new(atomic.Pointer[cachedWindow])}
}

// window is compute, through the cache.
func (c clock) window(now time.Time) (start, end time.Time, id string) {
	if w := c.last.Load(); w != nil && !now.Before(w.start) && now.Before(w.end) {
		return w.start, w.end, w.id
	}
	start, end, id = c.compute(now)
	c.last.Store(&cachedWindow{start, end, id})
	return start, end, id
}

// compute returns the daily window that holds now: the last reset at or
// before now, the next reset after it, and the window's id (the local date
// on which it began, as YYYYMMDD).
func (c clock) compute(now time.Time) (start, end time.Time, id string) {
	y, m, d := now.In(c.loc).Date()
	start = c.resetOn(y, m, d)
	for start.After(now) {
		d--
		start = c.resetOn(y, m, d)
	}
	end = c.resetOn(y, m, d+1)
	// A reset time inside a daylight saving gap can land before the
	// midnight of its own date (Santiago's clocks skip 00:00-01:00), so the
	// next day's reset may already have passed.
	for !end.After(now) {
		d++
		start, end = end, c.resetOn(y, m, d+1)
	}
	// time.Date normalizes day overflow; so does this date at noon UTC.
	id = time.Date(y, m, d, 12, 0, 0, 0, time.UTC).Format("20060102")
	return start, end, id
}

// resetOn is the reset instant of the given local date (d may overflow).
func (c clock) resetOn(y int, m time.Month, d int) time.Time {
	r := c.resetAt
	return time.Date(y, m, d, int(r/time.Hour), int(r%time.Hour/time.Minute),
		int(r%time.Minute/time.Second), int(r%time.Second), c.loc)
}
