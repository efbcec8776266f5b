// Package redislock is the one Redis lock waybill's stores share: SET NX PX
// with a random owner id, released by compare-and-delete so that a holder
// whose ttl passed never removes the next holder's lock.
package redislock

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

// Acquire takes the lock at key for ttl. ok is false when another owner
// holds it. release gives it back if this owner still holds it; calling it
// twice, or after the ttl, is harmless.
func Acquire(ctx context.Context, rdb redis.UniversalClient, key string, ttl time.Duration) (release func(context.Context) error, ok bool, err error) {
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	owner := hex.EncodeToString(id[:])
	if ok, err = rdb.SetNX(ctx, key, owner, ttl).Result(); err != nil || !ok {
		return nil, false, err
	}
	return func(ctx context.Context) error {
		return releaseScript.Run(ctx, rdb, []string{key}, owner).Err()
	}, true, nil
}
