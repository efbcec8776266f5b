package ratelimit

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix is the key prefix of a RedisStore made with an empty one.
const DefaultKeyPrefix = "waybill:ratelimit:"

// RedisStore keeps the counters in Redis, so that limiters in many
// processes share them. Each decision, refund and ExhaustApp is one Lua
// script (EVALSHA, falling back to EVAL when the server does not have it),
// hence atomic. Scripts use the time passed to the Limiter, never the
// server's clock, so every process must have a reasonably synchronized
// clock, and tests control time.
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
// again. The braces keep one
// appid's keys in one Redis Cluster slot, as one script needs.
type RedisStore struct {
	c      redis.Scripter
	prefix string
}

// NewRedisStore returns a RedisStore that uses c (a *redis.Client,
// *redis.ClusterClient or *redis.Ring) and puts keyPrefix before every key;
// an empty keyPrefix means DefaultKeyPrefix. Limiters share counts when their
// stores use the same server and prefix.
func NewRedisStore(c redis.Scripter, keyPrefix string) *RedisStore {
	if keyPrefix == "" {
		keyPrefix = DefaultKeyPrefix
	}
	return &RedisStore{c: c, prefix: keyPrefix}
}

func (s *RedisStore) appKey(appid string) string { return s.prefix + "{" + appid + "}:" }

func (s *RedisStore) windowKey(appid, window string) string { return s.appKey(appid) + window + ":" }

// redisTakeScript is MemoryStore.take in Lua, with the same arithmetic on
// integer microseconds (exact in Lua's doubles up to 2^53, year 2255).
//
// KEYS: app count, user count, exhausted flag, tat.
// ARGV: n, app quota, user quota (-1: unlimited or no openid), now (µs),
// window expiry (end plus grace, µs), interval (µs per call, 0: unlimited), burst,
// max wait (µs a reservation may wait for its token; 0 for AllowN).
// Returns {allowed, reason, retry (µs), app count, user count, exhausted,
// at (µs, when the allowed call may go; 0 when denied)}.
var redisTakeScript = redis.NewScript(`
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
  redis.call('SET', KEYS[4], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
app = redis.call('INCRBY', KEYS[1], n)
if app == n then redis.call('PEXPIRE', KEYS[1], ttl) end
if userQuota >= 0 then
  user = redis.call('INCRBY', KEYS[2], n)
  if user == n then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return {1, 0, 0, app, user, 0, at}
`)

// redisRefundScript lowers each count in KEYS by ARGV[1], not below zero;
// an expired (ended) window's keys are left absent.
var redisRefundScript = redis.NewScript(`
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  local v = tonumber(redis.call('GET', KEYS[i]) or 0)
  local d = math.min(n, v)
  if d > 0 then redis.call('DECRBY', KEYS[i], d) end
end
return 0
`)

// redisExhaustScript sets the flag KEYS[1] for ARGV[1] milliseconds. A
// script so that RedisStore needs nothing but redis.Scripter.
var redisExhaustScript = redis.NewScript(`
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return 0
`)

func (s *RedisStore) take(ctx context.Context, q query) (outcome, error) {
	w := s.windowKey(q.appid, q.window)
	keys := []string{w + "app", w + "u:" + q.openid, w + "exhausted", s.appKey(q.appid) + "tat"}
	r, err := redisTakeScript.Run(ctx, s.c, keys,
		q.n, q.appQuota, q.userQuota, q.now, q.expire, q.interval, q.burst, q.maxWait).Int64Slice()
	if err != nil {
		return outcome{}, err
	}
	if len(r) != 7 {
		return outcome{}, fmt.Errorf("take script returned %d values, want 7", len(r))
	}
	return outcome{
		allowed:   r[0] == 1,
		reason:    Reason(r[1]),
		retry:     r[2],
		app:       r[3],
		user:      r[4],
		exhausted: r[5] == 1,
		at:        r[6],
	}, nil
}

func (s *RedisStore) refund(ctx context.Context, appid, openid, window string, n int64) error {
	w := s.windowKey(appid, window)
	keys := []string{w + "app"}
	if openid != "" {
		keys = append(keys, w+"u:"+openid)
	}
	return redisRefundScript.Run(ctx, s.c, keys, n).Err()
}

func (s *RedisStore) exhaust(ctx context.Context, appid, window string, now, expire int64) error {
	ttl := max(1, (expire-now+999)/1000)
	return redisExhaustScript.Run(ctx, s.c, []string{s.windowKey(appid, window) + "exhausted"}, ttl).Err()
}
