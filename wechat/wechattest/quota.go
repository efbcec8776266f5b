package wechattest

import "time"

type usageKey struct{ appid, path string }

// usage counts one appid's calls to one path in the current quota day and
// calendar minute.
type usage struct {
	day         int
	count       int
	minute      int64
	minuteCount int
}

type openidKey struct {
	appid  string
	line   line
	openid string
}

type dayCount struct{ day, count int }

// quotaDay numbers the quota day that now falls in: days start at
// Config.QuotaReset in Config.QuotaLocation.
func (s *Server) quotaDay(now time.Time) int {
	y, m, d := now.In(s.cfg.QuotaLocation).Add(-s.cfg.QuotaReset).Date()
	return y*10000 + int(m)*100 + d
}

// openidLimit is the per-openid daily quota of a line; negative is no limit.
func (s *Server) openidLimit(ln line) int {
	switch ln {
	case lineQuery:
		return s.cfg.OpenIDDailyQuota
	case lineFollow:
		return s.cfg.FollowOpenIDDailyQuota
	}
	return -1
}

// consumeLocked counts a call of appid to path (with openid on line ln, if
// any) against the quotas. It returns 0, or 45009 / 45011 without counting
// the call: a refused call uses no quota.
func (s *Server) consumeLocked(appid, path, openid string, ln line, now time.Time) int {
	day, minute := s.quotaDay(now), now.Unix()/60
	u := s.usage[usageKey{appid, path}]
	if u == nil {
		u = &usage{}
		s.usage[usageKey{appid, path}] = u
	}
	if u.day != day {
		u.day, u.count = day, 0
	}
	if u.minute != minute {
		u.minute, u.minuteCount = minute, 0
	}
	if lim := s.cfg.AppDailyQuota; lim > 0 && u.count >= lim {
		return 45009
	}
	if lim := s.cfg.MinuteLimit; lim > 0 && u.minuteCount >= lim {
		return 45011
	}
	var oc *dayCount
	if lim := s.openidLimit(ln); openid != "" && lim > 0 {
		k := openidKey{appid, ln, openid}
		if oc = s.openidUsage[k]; oc == nil {
			oc = &dayCount{}
			s.openidUsage[k] = oc
		}
		if oc.day != day {
			oc.day, oc.count = day, 0
		}
		if oc.count >= lim {
			return 45009
		}
		oc.count++
	}
	u.count++
	u.minuteCount++
	return 0
}

// quotaUsedLocked reports how many calls appid made to path in now's quota day.
func (s *Server) quotaUsedLocked(appid, path string, now time.Time) int {
	if u := s.usage[usageKey{appid, path}]; u != nil && u.day == s.quotaDay(now) {
		return u.count
	}
	return 0
}

// ResetQuota clears appid's daily and per-minute usage on every path and for
// every openid, as cgi-bin/clear_quota does on WeChat.
func (s *Server) ResetQuota(appid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.usage {
		if k.appid == appid {
			delete(s.usage, k)
		}
	}
	for k := range s.openidUsage {
		if k.appid == appid {
			delete(s.openidUsage, k)
		}
	}
}
