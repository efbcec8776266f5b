package redisutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/redis/go-redis/v9"
)

// releaseScript deletes the lock only if this owner still holds it: its ttl
// may have passed and another process taken it since.
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)

// acquireScript takes the lock when it is free, or renews it when this
// owner holds it already; another owner's lock stays.
var acquireScript = redis.NewScript(`
local v = redis.call("GET", KEYS[1])
if v == false then
	redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
	return 1
end
if v == ARGV[1] then
	redis.call("PEXPIRE", KEYS[1], ARGV[2])
	return 1
end
return 0`)

// Acquire takes the lock at key for ttl under a fresh random owner id (SET
// NX PX). ok is false when another owner holds it. release gives it back
// only if this owner still holds it (compare-and-delete), so a holder whose
// ttl passed never removes the next holder's lock; calling it twice, or
// after the ttl, is harmless.
func Acquire(ctx context.Context, rdb redis.UniversalClient, key string, ttl time.Duration) (release func(context.Context) error, ok bool, err error) {
	return AcquireAs(ctx, rdb, key, "", ttl)
}

// AcquireAs is Acquire for a named owner: a lock that owner holds already is
// taken again and its ttl restarted. "" means a fresh random owner. ttl is
// rounded up to whole milliseconds.
func AcquireAs(ctx context.Context, rdb redis.UniversalClient, key, owner string, ttl time.Duration) (release func(context.Context) error, ok bool, err error) {
	if owner == "" {
		var id [16]byte
		_, _ = rand.Read(id[:]) // never fails (crypto/rand)
		owner = hex.EncodeToString(id[:])
		ok, err = rdb.SetNX(ctx, key, owner, ttl).Result()
	} else {
		ms := max(1, (ttl+time.Millisecond-1)/time.Millisecond)
		var n int64
		n, err = acquireScript.Run(ctx, rdb, []string{key}, owner, int64(ms)).Int64()
		ok = n == 1
	}
	if err != nil || !ok {
		return nil, false, err
	}
	return func(ctx context.Context) error {
		return releaseScript.Run(ctx, rdb, []string{key}, owner).Err()
	}, true, nil
}
