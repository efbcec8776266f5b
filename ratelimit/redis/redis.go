// Package redis keeps the counters of ratelimit's Limiter in Redis, so that
// limiters in many processes share one appid's quotas and rate. cmd/waybill
// and programs that share limits between processes import it; a program of
// one process needs only ratelimit.MemoryStore, and so links no Redis client.
package redis

import (
	"context"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/ratelimit"
)

// DefaultKeyPrefix is the key prefix of a Store made with an empty one.
const DefaultKeyPrefix = "waybill:ratelimit:"

// Store is a ratelimit.Store that keeps the counters in Redis, so that
// limiters in many processes share them. Each decision, refund and
// ExhaustApp is one Lua script (EVALSHA, falling back to EVAL when the
// server does not have it), hence atomic. Scripts use the time passed to the
// Limiter, never the server's clock, so every process must have a reasonably
// synchronized clock, and tests control time.
//
// Keys, with P the prefix, A the appid, D the window's id (the local date it
// began, YYYYMMDD) and O an openid:
//
//	P{A}:D:app        calls of the appid in the window
//	P{A}:D:u:O        calls of the openid in the window
//	P{A}:D:exhausted  set by ExhaustApp
//	P{A}:tat          the smooth rate's state (GCRA theoretical arrival time, µs)
//
// Window keys live until five minutes after the window ends (measured from
// the decision's time; the grace keeps the old window's counts for callers
// whose clocks run a little behind), the rate key until its bucket is full
// again. The braces keep one appid's keys in one Redis Cluster slot, as one
// script needs.
type Store struct {
	c      goredis.Scripter
	prefix string
}

var _ ratelimit.Store = (*Store)(nil)

// NewStore returns a Store that uses c (a *goredis.Client,
// *goredis.ClusterClient or *goredis.Ring) and puts keyPrefix before every
// key; an empty keyPrefix means DefaultKeyPrefix. Limiters share counts when
// their stores use the same server and prefix.
func NewStore(c goredis.Scripter, keyPrefix string) *Store {
	if keyPrefix == "" {
		keyPrefix = DefaultKeyPrefix
	}
	return &Store{c: c, prefix: keyPrefix}
}

func (s *Store) appKey(appid string) string { return s.prefix + "{" + appid + "}:" }

func (s *Store) windowKey(appid, window string) string { return s.appKey(appid) + window + ":" }

// takeScript is ratelimit.MemoryStore.Take in Lua, with the same arithmetic
// on integer microseconds (exact in Lua's doubles up to 2^53, year 2255).
//
// KEYS: app count, user count, exhausted flag, tat.
// ARGV: n, app quota, user quota (-1: unlimited or no openid), now (µs),
// window expiry (end plus grace, µs), interval (µs per call, 0: unlimited), burst,
// max wait (µs a reservation may wait for its token; 0 for AllowN).
// Returns {allowed, reason, retry (µs), app count, user count, exhausted,
// at (µs, when the allowed call may go; 0 when denied)}.
var takeScript = goredis.NewScript(`
local n = tonumber(ARGV[1])
local appQuota = tonumber(ARGV[2])
local userQuota = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local ttl = math.ceil((tonumber(ARGV[5]) - now) / 1000)
local interval = tonumber(ARGV[6])
local burst = tonumber(ARGV[7])
local maxWait = tonumber(ARGV[8])

local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local app = tonumber(v[1] or 0)
local user = 0
if userQuota >= 0 then
  user = tonumber(v[2] or 0)
end
if v[3] or (appQuota >= 0 and app + n > appQuota) then
  return {0, 1, 0, app, user, v[3] and 1 or 0, 0}
end
if userQuota >= 0 and user + n > userQuota then
  return {0, 2, 0, app, user, 0, 0}
end
local at = now
if interval > 0 then
  local tat = tonumber(v[4] or 0)
  if tat < now then tat = now end
  tat = tat + n * interval
  local limit = burst * interval
  if tat - now > limit + maxWait then
    return {0, 3, tat - limit, app, user, 0, 0}
  end
  if tat - limit > now then at = tat - limit end
  -- A second past the TAT: Redis expires by its own clock, and a caller
  -- whose now runs behind it (a slow or loaded one) must still find the
  -- TAT; one kept longer reads as now, which is the same thing.
  redis.call('SET', KEYS[4], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
app = redis.call('INCRBY', KEYS[1], n)
if app == n then redis.call('PEXPIRE', KEYS[1], ttl) end
if userQuota >= 0 then
  user = redis.call('INCRBY', KEYS[2], n)
  if user == n then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return {1, 0, 0, app, user, 0, at}
`)

// refundScript lowers each count in KEYS by ARGV[1], not below zero; an
// expired (ended) window's keys are left absent.
var refundScript = goredis.NewScript(`
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  local v = tonumber(redis.call('GET', KEYS[i]) or 0)
  local d = math.min(n, v)
  if d > 0 then redis.call('DECRBY', KEYS[i], d) end
end
return 0
`)

// exhaustScript sets the flag KEYS[1] for ARGV[1] milliseconds. A script so
// that Store needs nothing but goredis.Scripter.
var exhaustScript = goredis.NewScript(`
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return 0
`)

// Take implements ratelimit.Store with takeScript.
func (s *Store) Take(ctx context.Context, q ratelimit.Query) (ratelimit.Outcome, error) {
	w := s.windowKey(q.AppID, q.Window)
	keys := []string{w + "app", w + "u:" + q.OpenID, w + "exhausted", s.appKey(q.AppID) + "tat"}
	r, err := takeScript.Run(ctx, s.c, keys,
		q.N, q.AppQuota, q.UserQuota, q.Now, q.Expire, q.Interval, q.Burst, q.MaxWait).Int64Slice()
	if err != nil {
		return ratelimit.Outcome{}, err
	}
	if len(r) != 7 {
		return ratelimit.Outcome{}, fmt.Errorf("take script returned %d values, want 7", len(r))
	}
	return ratelimit.Outcome{
		Allowed:   r[0] == 1,
		Reason:    ratelimit.Reason(r[1]),
		Retry:     r[2],
		App:       r[3],
		User:      r[4],
		Exhausted: r[5] == 1,
		At:        r[6],
	}, nil
}

// Refund implements ratelimit.Store with refundScript.
func (s *Store) Refund(ctx context.Context, appid, openid, window string, n int64) error {
	w := s.windowKey(appid, window)
	keys := []string{w + "app"}
	if openid != "" {
		keys = append(keys, w+"u:"+openid)
	}
	return refundScript.Run(ctx, s.c, keys, n).Err()
}

// Exhaust implements ratelimit.Store with exhaustScript.
func (s *Store) Exhaust(ctx context.Context, appid, window string, now, expire int64) error {
	ttl := max(1, (expire-now+999)/1000)
	return exhaustScript.Run(ctx, s.c, []string{s.windowKey(appid, window) + "exhausted"}, ttl).Err()
}
