package ratelimit

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
)

// MemoryStore keeps the counters in this process's memory. Its memory is
// bounded: a window's counters, openids included, are dropped once a
// decision for any appid is made five minutes or more after the window's
// end (the grace tolerates callers whose clocks differ). Until then a
// buyer's count costs about 20 bytes: it is kept under a 64-bit hash of the
// openid, not the openid (from a seed drawn when the store is made; two of
// an appid's buyers in one window share a count with a chance of about
// n²/2⁶⁵, which could only refuse one of them early). It is safe for
// simultaneous use by multiple goroutines.
type MemoryStore struct {
	seed maphash.Seed
	mu   sync.Mutex
	apps map[string]*memApp
	// nextSweep is the earliest end (microseconds) among the kept windows
	// and idle buckets: no sweep is needed before it.
	nextSweep int64
}

type memApp struct {
	// windows holds usually one window, two around a reset when callers'
	// clocks differ.
	windows map[string]*memWindow
	// tat is the GCRA's theoretical arrival time, in microseconds.
	tat int64
}

type memWindow struct {
	expire    int64
	count     int64
	exhausted bool
	users     map[uint64]int64 // by hash of the openid
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{seed: maphash.MakeSeed(), apps: make(map[string]*memApp), nextSweep: math.MaxInt64}
}

// Take implements Store. It is the reference form of the decision: the
// Redis store's script is the same logic in Lua.
func (s *MemoryStore) Take(_ context.Context, q Query) (Outcome, error) {
	user := maphash.String(s.seed, q.OpenID)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(q.Now)

	var o Outcome
	a := s.apps[q.AppID]
	var w *memWindow
	var tat int64
	if a != nil {
		w, tat = a.windows[q.Window], a.tat
	}
	if w != nil {
		o.App, o.Exhausted = w.count, w.exhausted
		if q.UserQuota >= 0 {
			o.User = w.users[user]
		}
	}
	switch {
	case o.Exhausted || (q.AppQuota >= 0 && o.App+q.N > q.AppQuota):
		o.Reason = ReasonAppDaily
		return o, nil
	case q.UserQuota >= 0 && o.User+q.N > q.UserQuota:
		o.Reason = ReasonUserDaily
		return o, nil
	}
	o.At = q.Now
	if q.Interval > 0 {
		// A reservation may take tokens up to MaxWait ahead of the bucket;
		// its calls go when the last of them comes.
		tat = max(tat, q.Now) + q.N*q.Interval
		limit := q.Burst * q.Interval
		if tat-q.Now > limit+q.MaxWait {
			o.Reason, o.Retry, o.At = ReasonRate, tat-limit, 0
			return o, nil
		}
		o.At = max(q.Now, tat-limit)
	}

	a, w = s.window(q.AppID, q.Window, q.Expire)
	if q.Interval > 0 {
		a.tat = tat
	}
	w.count += q.N
	o.App = w.count
	if q.UserQuota >= 0 {
		w.users[user] += q.N
		o.User = w.users[user]
	}
	o.Allowed = true
	return o, nil
}

// window returns the app and window, creating them.
func (s *MemoryStore) window(appid, id string, expire int64) (*memApp, *memWindow) {
	a := s.apps[appid]
	if a == nil {
		a = &memApp{windows: make(map[string]*memWindow, 1)}
		s.apps[appid] = a
	}
	w := a.windows[id]
	if w == nil {
		w = &memWindow{expire: expire, users: make(map[uint64]int64)}
		a.windows[id] = w
		s.nextSweep = min(s.nextSweep, expire)
	}
	return a, w
}

// sweep drops the windows that expired at or before now, and the appids left
// with neither windows nor a pending token debt.
func (s *MemoryStore) sweep(now int64) {
	if now < s.nextSweep {
		return
	}
	next := int64(math.MaxInt64)
	for appid, a := range s.apps {
		for id, w := range a.windows {
			if w.expire <= now {
				delete(a.windows, id)
				continue
			}
			next = min(next, w.expire)
		}
		if len(a.windows) == 0 {
			if a.tat <= now {
				delete(s.apps, appid)
				continue
			}
			next = min(next, a.tat)
		}
	}
	s.nextSweep = next
}

// Refund implements Store.
func (s *MemoryStore) Refund(_ context.Context, appid, openid, window string, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appid]
	if a == nil {
		return nil
	}
	w := a.windows[window]
	if w == nil {
		return nil
	}
	w.count -= min(n, w.count)
	if openid != "" {
		user := maphash.String(s.seed, openid)
		if u := w.users[user] - min(n, w.users[user]); u > 0 {
			w.users[user] = u
		} else {
			delete(w.users, user)
		}
	}
	return nil
}

// Exhaust implements Store.
func (s *MemoryStore) Exhaust(_ context.Context, appid, window string, now, expire int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(now)
	_, w := s.window(appid, window, expire)
	w.exhausted = true
	return nil
}

// size counts what the store holds, for tests of its memory bound.
func (s *MemoryStore) size() (apps, windows, users int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.apps {
		apps++
		windows += len(a.windows)
		for _, w := range a.windows {
			users += len(w.users)
		}
	}
	return apps, windows, users
}
