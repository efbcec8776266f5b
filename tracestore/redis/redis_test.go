package redis_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/storetest"
	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/tracestore/redis"
)

// newStore returns a Store on its own client, as a separate process would
// have, under prefix.
func newStore(t testing.TB, prefix string, ttl time.Duration) *redis.Store {
	t.Helper()
	s, err := redis.New(testredis.Client(t), redis.Config{Prefix: prefix, TTL: ttl})
	require.NoError(t, err)
	return s
}

// The Redis store passes the same behaviour table as the memory store, every
// handle on a separate client, on a real redis-server (scripts/redis.sh).
func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, ttl time.Duration) storetest.Env {
		prefix := testredis.Prefix(t)
		return storetest.Env{
			Open:    func() tracestore.Store { return newStore(t, prefix, ttl) },
			Advance: func(d time.Duration) { time.Sleep(d) }, // Redis keeps real time
		}
	})
}

// TestStoreConformanceUnordered: through a client that may run a
// pipeline's commands out of order (a Ring, as a Cluster), the one-step
// forms run their commands one after the other, and pass the same table.
func TestStoreConformanceUnordered(t *testing.T) {
	addr := testredis.Addr(t)
	storetest.Run(t, func(t *testing.T, ttl time.Duration) storetest.Env {
		prefix := testredis.Prefix(t)
		return storetest.Env{
			Open: func() tracestore.Store {
				ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"one": addr}})
				t.Cleanup(func() { _ = ring.Close() })
				s, err := redis.New(ring, redis.Config{Prefix: prefix, TTL: ttl})
				require.NoError(t, err)
				return s
			},
			Advance: func(d time.Duration) { time.Sleep(d) },
		}
	})
}

var key = tracestore.Key{AppID: "wx0001", WaybillID: "SF1001", TransID: "4200001"}

// The layout is a storage format: other versions of this package, and
// operators with redis-cli, read it.
func TestStoreKeysAndValues(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	s := newStore(t, prefix, time.Hour)

	traced := time.Date(2026, 3, 1, 8, 30, 15, 0, time.UTC)
	require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-1", GoodsHash: "abc", TracedAt: traced}))
	raw, err := rdb.Get(ctx, prefix+"wx0001:SF1001:4200001").Bytes()
	require.NoError(t, err)
	assert.JSONEq(t, `{"waybill_token":"tok-1","goods_hash":"abc","traced_at":"2026-03-01T08:30:15Z"}`, string(raw))
	ttl, err := rdb.PTTL(ctx, prefix+"wx0001:SF1001:4200001").Result()
	require.NoError(t, err)
	assert.True(t, ttl > 59*time.Minute && ttl <= time.Hour, "record PTTL %v, want about an hour", ttl)

	release, ok, err := s.Claim(ctx, key, "", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	owner, err := rdb.Get(ctx, prefix+"claim:wx0001:SF1001:4200001").Result()
	require.NoError(t, err)
	assert.Len(t, owner, 32, "owner id")
	ttl, err = rdb.PTTL(ctx, prefix+"claim:wx0001:SF1001:4200001").Result()
	require.NoError(t, err)
	assert.True(t, ttl > 0 && ttl <= time.Minute, "claim PTTL %v", ttl)
	release()
	n, err := rdb.Exists(ctx, prefix+"claim:wx0001:SF1001:4200001").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "release left the claim key")

	// A second claimer gets a different owner id: a release cannot be forged
	// by guessing.
	_, ok, err = s.Claim(ctx, key, "", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	owner2, err := rdb.Get(ctx, prefix+"claim:wx0001:SF1001:4200001").Result()
	require.NoError(t, err)
	assert.NotEqual(t, owner, owner2)
}

func TestStoreDefaults(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	s, err := redis.New(rdb, redis.Config{})
	require.NoError(t, err)
	assert.Equal(t, "tracestore/redis.Store{waybill:trace:}", s.String())

	// A key no real appid has, removed whatever happens.
	k := tracestore.Key{AppID: "test-defaults-" + fmt.Sprint(time.Now().UnixNano()), WaybillID: "SF1"}
	t.Cleanup(func() { rdb.Del(context.Background(), redis.DefaultPrefix+k.String()) })
	require.NoError(t, s.Put(ctx, k, tracestore.Record{WaybillToken: "tok"}))
	ttl, err := rdb.PTTL(ctx, redis.DefaultPrefix+k.String()).Result()
	require.NoError(t, err)
	assert.True(t, ttl > tracestore.DefaultTTL-time.Minute && ttl <= tracestore.DefaultTTL, "PTTL %v, want 30 days", ttl)
}

func TestNewValidates(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	_, err := redis.New(rdb, redis.Config{TTL: -time.Second})
	assert.ErrorContains(t, err, "TTL")
	_, err = redis.New(rdb, redis.Config{TTL: time.Microsecond})
	assert.ErrorContains(t, err, "millisecond")
	_, err = redis.New(nil, redis.Config{})
	assert.ErrorContains(t, err, "nil client")
}

func TestStoreReportsCorruptRecords(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	s := newStore(t, prefix, time.Hour)
	require.NoError(t, rdb.Set(ctx, prefix+key.String(), "not json", time.Hour).Err())
	_, ok, err := s.Get(ctx, key)
	assert.False(t, ok)
	var syntax *json.SyntaxError
	assert.ErrorAs(t, err, &syntax)
	assert.ErrorContains(t, err, key.String())
}

// TestClaimGetCorruptRecord: a corrupt record comes back as ErrBadRecord,
// with the claim taken for it released again.
func TestClaimGetCorruptRecord(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	s := newStore(t, prefix, time.Hour)
	require.NoError(t, rdb.Set(ctx, prefix+key.String(), "not json", time.Hour).Err())
	release, won, _, ok, err := s.ClaimGet(ctx, key, "owner-a", time.Minute)
	assert.ErrorIs(t, err, tracestore.ErrBadRecord)
	assert.False(t, won)
	assert.False(t, ok)
	assert.Nil(t, release)
	assert.Zero(t, rdb.Exists(ctx, prefix+"claim:"+key.String()).Val(), "the claim was released")
}

// TestOneStepFormsSurviveScriptFlush: after Redis forgets its scripts (a
// restart, SCRIPT FLUSH), the pipelines send them again.
func TestOneStepFormsSurviveScriptFlush(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	s := newStore(t, testredis.Prefix(t), time.Hour)
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	release, won, _, ok, err := s.ClaimGet(ctx, key, "owner-a", time.Minute)
	require.NoError(t, err)
	require.True(t, won)
	assert.False(t, ok)
	release()
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	_, won, err = s.Claim(ctx, key, "owner-a", time.Minute)
	require.NoError(t, err)
	require.True(t, won)
	require.NoError(t, rdb.ScriptFlush(ctx).Err())
	require.NoError(t, s.PutRelease(ctx, key, tracestore.Record{WaybillToken: "tok"}, "owner-a"))
	_, won, err = s.Claim(ctx, key, "owner-b", time.Minute)
	require.NoError(t, err)
	assert.True(t, won, "owner-a's claim was released")
}

func TestStoreWrapsConnectionErrors(t *testing.T) {
	// A loopback port with nothing listening.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	rdb := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	s, err := redis.New(rdb, redis.Config{})
	require.NoError(t, err)

	ctx := context.Background()
	var opErr *net.OpError
	_, _, err = s.Get(ctx, key)
	assert.ErrorAs(t, err, &opErr)
	assert.True(t, strings.HasPrefix(err.Error(), "tracestore/redis: get "+key.String()), err.Error())
	err = s.Put(ctx, key, tracestore.Record{WaybillToken: "token-ABC123"})
	assert.ErrorAs(t, err, &opErr)
	assert.NotContains(t, err.Error(), "ABC123", "an error must not carry the token")
	_, ok, err := s.Claim(ctx, key, "", time.Second)
	assert.ErrorAs(t, err, &opErr)
	assert.False(t, ok)
}

// A holder whose process dies mid-trace (its connection closes, nothing is
// released) blocks the key until its claim's ttl, and no longer.
func TestCrashedHolderClaimExpires(t *testing.T) {
	ctx := context.Background()
	prefix := testredis.Prefix(t)
	const ttl = 300 * time.Millisecond

	doomedClient := testredis.Client(t)
	doomed, err := redis.New(doomedClient, redis.Config{Prefix: prefix})
	require.NoError(t, err)
	claimed := time.Now()
	_, ok, err := doomed.Claim(ctx, key, "", ttl)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, doomedClient.Close()) // the crash

	// Other processes, each on its own connection, poll for the key.
	survivors := []*redis.Store{newStore(t, prefix, 0), newStore(t, prefix, 0), newStore(t, prefix, 0)}
	var (
		winner   int
		wonAt    time.Time
		deadline = time.Now().Add(30 * time.Second)
	)
	for wonAt.IsZero() {
		require.True(t, time.Now().Before(deadline), "the crashed claim never expired")
		for i, s := range survivors {
			release, ok, err := s.Claim(ctx, key, "", time.Hour)
			require.NoError(t, err)
			if ok {
				winner, wonAt = i, time.Now()
				t.Cleanup(release)
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Redis cannot expire a key early, so this direction holds on any machine.
	assert.GreaterOrEqual(t, wonAt.Sub(claimed), ttl, "the claim lapsed before its ttl")
	for i, s := range survivors {
		_, ok, err := s.Claim(ctx, key, "", time.Hour)
		require.NoError(t, err)
		assert.False(t, ok, "survivor %d claimed the key survivor %d holds", i, winner)
	}
}

func BenchmarkRedisStoreGet(b *testing.B) {
	storetest.BenchGet(b, newStore(b, testredis.Prefix(b), time.Hour))
}

// An unreadable record (not JSON, or a key of another type) is reported as
// tracestore.ErrBadRecord, which the handler traces over, and Put replaces it.
func TestUnreadableRecordIsBadRecord(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	s := newStore(t, prefix, time.Hour)
	recordKey := prefix + "wx0001:SF1001:4200001"
	for name, spoil := range map[string]func() error{
		"not JSON":   func() error { return rdb.Set(ctx, recordKey, "{half", 0).Err() },
		"wrong type": func() error { return rdb.HSet(ctx, recordKey, "waybill_token", "x").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, rdb.Del(ctx, recordKey).Err())
			require.NoError(t, spoil())
			_, ok, err := s.Get(ctx, key)
			assert.ErrorIs(t, err, tracestore.ErrBadRecord)
			assert.False(t, ok)
			require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-1"}))
			rec, ok, err := s.Get(ctx, key)
			require.NoError(t, err)
			assert.True(t, ok)
			assert.Equal(t, "tok-1", rec.WaybillToken)
		})
	}
}
