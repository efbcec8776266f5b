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
		var n int64
		n, err = acquireScript.Run(ctx, rdb, []string{key}, owner, millis(ttl)).Int64()
		ok = n == 1
	}
	if err != nil || !ok {
		return nil, false, err
	}
	return func(ctx context.Context) error {
		return releaseScript.Run(ctx, rdb, []string{key}, owner).Err()
	}, true, nil
}

// Owned is a lock held by a named owner, for commands that go in a
// pipeline with others: one round trip for a lock and the data it guards.
type Owned struct {
	Key, Owner string
}

// PipeAcquire queues AcquireAs's script for o in pipe, taking the lock for
// ttl (rounded up to whole milliseconds); the command's Int64 is 1 when it
// was taken. eval sends the script itself rather than its hash: see
// Pipelined.
func PipeAcquire(ctx context.Context, pipe redis.Pipeliner, o Owned, ttl time.Duration, eval bool) *redis.Cmd {
	return runIn(ctx, pipe, acquireScript, eval, []string{o.Key}, o.Owner, millis(ttl))
}

// millis is ttl in whole milliseconds, rounded up, at least one.
func millis(ttl time.Duration) int64 {
	return int64(max(1, (ttl+time.Millisecond-1)/time.Millisecond))
}

// PipeRelease queues the compare-and-delete of o's lock in pipe.
func PipeRelease(ctx context.Context, pipe redis.Pipeliner, o Owned, eval bool) *redis.Cmd {
	return runIn(ctx, pipe, releaseScript, eval, []string{o.Key}, o.Owner)
}

func runIn(ctx context.Context, pipe redis.Pipeliner, s *redis.Script, eval bool, keys []string, args ...any) *redis.Cmd {
	if eval {
		return s.Eval(ctx, pipe, keys, args...)
	}
	return s.EvalSha(ctx, pipe, keys, args...)
}

// Pipelined runs the commands fn queues in one round trip, in order on one
// Redis (a Cluster client may run them on several nodes in any order, so
// callers that need the order pipeline only on a *redis.Client), and
// returns them, each with its own result or error (redis.Nil included):
// callers read each. Scripts go by hash; when Redis does not know one (NOSCRIPT: a restart, or
// SCRIPT FLUSH), the pipeline runs again with the scripts in full. Its
// other commands run twice then, so they must be idempotent.
func Pipelined(ctx context.Context, rdb redis.UniversalClient, fn func(pipe redis.Pipeliner, eval bool)) []redis.Cmder {
	cmds, _ := rdb.Pipelined(ctx, func(p redis.Pipeliner) error { fn(p, false); return nil })
	for _, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			cmds, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error { fn(p, true); return nil })
			break
		}
	}
	return cmds
}
