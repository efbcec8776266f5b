// Package storetest is the behaviour every tracestore.Store shares, run
// against each implementation (tracestore.Memory and tracestore/redis) so
// that the memory and Redis stores cannot drift apart. Only their tests
// import it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/tracestore"
)

// Env is one empty store namespace under test.
type Env struct {
	// Open returns a handle on the namespace. Handles share data and claims,
	// as processes sharing one Redis do; each call may return a new handle
	// (a new client) or the same store.
	Open func() tracestore.Store
	// Advance lets d pass for the stores: a step of a fake clock, or a sleep
	// when the store keeps real time.
	Advance func(d time.Duration)
	// ExactClock is true when Advance moves the store's clock exactly, so
	// the suite may also check that a record or claim is still there just
	// before it expires. With a real clock such a check would be a race
	// against the machine's speed, so only expiry itself is checked.
	ExactClock bool
}

// NewEnv makes an empty namespace whose records live ttl after their Put.
type NewEnv func(t *testing.T, ttl time.Duration) Env

// Timing of the suite. Expiries are short so that a real server passes them
// quickly; long is never reached, not even by a slow machine.
const (
	short = 150 * time.Millisecond
	long  = time.Hour
)

// Run runs the shared behaviour table against the stores newEnv makes.
func Run(t *testing.T, newEnv NewEnv) {
	ctx := context.Background()
	rec := func(token string) tracestore.Record {
		return tracestore.Record{
			WaybillToken: token,
			GoodsHash:    event.GoodsFingerprint([]event.Goods{{Name: token}}),
			TracedAt:     time.Date(2026, 3, 1, 8, 30, 15, 123456789, time.FixedZone("CST", 8*3600)),
		}
	}
	k := tracestore.Key{AppID: "wx0001", WaybillID: "SF1001", TransID: "4200001"}

	cases := []struct {
		name string
		ttl  time.Duration
		run  func(t *testing.T, env Env)
	}{
		{"get of an unknown key misses", long, func(t *testing.T, env Env) {
			_, ok, err := env.Open().Get(ctx, k)
			require.NoError(t, err)
			assert.False(t, ok)
		}},
		{"put then get round-trips every field", long, func(t *testing.T, env Env) {
			s := env.Open()
			want := rec("tok-1")
			require.NoError(t, s.Put(ctx, k, want))
			got, ok, err := s.Get(ctx, k)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, want.WaybillToken, got.WaybillToken)
			assert.Equal(t, want.GoodsHash, got.GoodsHash)
			assert.True(t, want.TracedAt.Equal(got.TracedAt), "TracedAt %v, want %v", got.TracedAt, want.TracedAt)
		}},
		{"put replaces the record", long, func(t *testing.T, env Env) {
			s := env.Open()
			require.NoError(t, s.Put(ctx, k, rec("tok-1")))
			require.NoError(t, s.Put(ctx, k, rec("tok-2")))
			got, ok, err := s.Get(ctx, k)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, "tok-2", got.WaybillToken)
			assert.Equal(t, rec("tok-2").GoodsHash, got.GoodsHash)
		}},
		{"keys differing in any part, or only in where a part ends, are separate", long, func(t *testing.T, env Env) {
			s := env.Open()
			keys := []tracestore.Key{
				k,
				{AppID: "wx0002", WaybillID: k.WaybillID, TransID: k.TransID},
				{AppID: k.AppID, WaybillID: "SF1002", TransID: k.TransID},
				{AppID: k.AppID, WaybillID: k.WaybillID},
				{AppID: "a:b", WaybillID: "c"},
				{AppID: "a", WaybillID: "b:c"},
				{AppID: "a%3Ab", WaybillID: "c"},
				{AppID: "a", WaybillID: "b", TransID: "c"},
			}
			for i, key := range keys {
				require.NoError(t, s.Put(ctx, key, rec(fmt.Sprint("tok-", i))))
			}
			for i, key := range keys {
				got, ok, err := s.Get(ctx, key)
				require.NoError(t, err)
				require.True(t, ok, "key %+v", key)
				assert.Equal(t, fmt.Sprint("tok-", i), got.WaybillToken, "key %+v", key)
			}
		}},
		{"a record is shared by every handle", long, func(t *testing.T, env Env) {
			require.NoError(t, env.Open().Put(ctx, k, rec("tok-1")))
			got, ok, err := env.Open().Get(ctx, k)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, "tok-1", got.WaybillToken)
		}},
		{"a record expires ttl after its put, and a put restarts it", short, func(t *testing.T, env Env) {
			s := env.Open()
			require.NoError(t, s.Put(ctx, k, rec("tok-1")))
			if env.ExactClock {
				env.Advance(short - time.Millisecond)
				_, ok, err := s.Get(ctx, k)
				require.NoError(t, err)
				require.True(t, ok, "expired before its ttl")
				require.NoError(t, s.Put(ctx, k, rec("tok-2")))
				env.Advance(short - time.Millisecond)
				_, ok, err = s.Get(ctx, k)
				require.NoError(t, err)
				require.True(t, ok, "a second put did not restart the ttl")
			}
			env.Advance(short + 50*time.Millisecond)
			_, ok, err := s.Get(ctx, k)
			require.NoError(t, err)
			assert.False(t, ok, "still there after its ttl")
		}},
		{"a canceled context fails every call", long, func(t *testing.T, env Env) {
			s := env.Open()
			canceled, cancel := context.WithCancel(ctx)
			cancel()
			_, _, err := s.Get(canceled, k)
			assert.ErrorIs(t, err, context.Canceled)
			assert.ErrorIs(t, s.Put(canceled, k, rec("tok-1")), context.Canceled)
			_, _, err = s.Claim(canceled, k, "", long)
			assert.ErrorIs(t, err, context.Canceled)
			_, ok, err := s.Get(ctx, k)
			require.NoError(t, err)
			assert.False(t, ok, "a put with a canceled context stored its record")
		}},
		{"a claim needs a positive ttl", long, func(t *testing.T, env Env) {
			s := env.Open()
			for _, ttl := range []time.Duration{0, -time.Second} {
				_, ok, err := s.Claim(ctx, k, "", ttl)
				assert.Error(t, err, "ttl %v", ttl)
				assert.False(t, ok, "ttl %v", ttl)
			}
		}},
		{"a claim excludes others until released", long, func(t *testing.T, env Env) {
			a, b := env.Open(), env.Open()
			release, ok, err := a.Claim(ctx, k, "", long)
			require.NoError(t, err)
			require.True(t, ok)
			for _, s := range []tracestore.Store{a, b} {
				_, ok, err := s.Claim(ctx, k, "", long)
				require.NoError(t, err)
				assert.False(t, ok, "a second claim won while the first is held")
			}
			other := tracestore.Key{AppID: k.AppID, WaybillID: k.WaybillID, TransID: "4200002"}
			releaseOther, ok, err := b.Claim(ctx, other, "", long)
			require.NoError(t, err)
			assert.True(t, ok, "a claim on another key was refused")
			releaseOther()
			release()
			release2, ok, err := b.Claim(ctx, k, "", long)
			require.NoError(t, err)
			require.True(t, ok, "no claim after release")
			release2()
		}},
		{"an owner takes its own claim again and renews it; others cannot", long, func(t *testing.T, env Env) {
			a, b := env.Open(), env.Open()
			release, ok, err := a.Claim(ctx, k, "owner-1", short)
			require.NoError(t, err)
			require.True(t, ok)
			_, ok, err = b.Claim(ctx, k, "owner-2", long)
			require.NoError(t, err)
			assert.False(t, ok, "another owner took a held claim")
			_, ok, err = b.Claim(ctx, k, "", long)
			require.NoError(t, err)
			assert.False(t, ok, "a fresh owner took a held claim")
			// The same owner, from another store value (a redelivery in a
			// restarted handler), takes it again with a longer ttl.
			release2, ok, err := b.Claim(ctx, k, "owner-1", long)
			require.NoError(t, err)
			require.True(t, ok, "the owner could not take back its own claim")
			env.Advance(short + 50*time.Millisecond)
			_, ok, err = a.Claim(ctx, k, "owner-2", long)
			require.NoError(t, err)
			assert.False(t, ok, "the renewed claim lapsed at its first ttl")
			release()
			_, ok, err = a.Claim(ctx, k, "owner-2", long)
			require.NoError(t, err)
			assert.True(t, ok, "the owner's release did not free its renewed claim")
			release2()
		}},
		{"claims and records do not interfere", long, func(t *testing.T, env Env) {
			s := env.Open()
			release, ok, err := s.Claim(ctx, k, "", long)
			require.NoError(t, err)
			require.True(t, ok)
			_, found, err := s.Get(ctx, k)
			require.NoError(t, err)
			assert.False(t, found, "a claim shows as a record")
			require.NoError(t, s.Put(ctx, k, rec("tok-1")))
			_, ok, err = s.Claim(ctx, k, "", long)
			require.NoError(t, err)
			assert.False(t, ok, "a put released the claim")
			release()
			got, found, err := s.Get(ctx, k)
			require.NoError(t, err)
			require.True(t, found, "release removed the record")
			assert.Equal(t, "tok-1", got.WaybillToken)
		}},
		{"a crashed holder's claim expires, and its late release spares the next holder", long, func(t *testing.T, env Env) {
			crashed, next := env.Open(), env.Open()
			staleRelease, ok, err := crashed.Claim(ctx, k, "", short)
			require.NoError(t, err)
			require.True(t, ok)
			if env.ExactClock {
				env.Advance(short - time.Millisecond)
				_, ok, err := next.Claim(ctx, k, "", long)
				require.NoError(t, err)
				require.False(t, ok, "the claim expired before its ttl")
			}
			env.Advance(short + 50*time.Millisecond)
			release, ok, err := next.Claim(ctx, k, "", long)
			require.NoError(t, err)
			require.True(t, ok, "an expired claim still blocks the key")

			staleRelease() // the old holder wakes up and releases what it no longer holds
			_, ok, err = crashed.Claim(ctx, k, "", long)
			require.NoError(t, err)
			assert.False(t, ok, "a stale release removed the new holder's claim")

			release()
			release() // twice is harmless
			release3, ok, err := crashed.Claim(ctx, k, "", long)
			require.NoError(t, err)
			require.True(t, ok)
			release() // and so is a late one
			_, ok, err = next.Claim(ctx, k, "", long)
			require.NoError(t, err)
			assert.False(t, ok, "a repeated release removed a later claim")
			release3()
		}},
		{"of many concurrent claimers exactly one wins, each round", long, func(t *testing.T, env Env) {
			const claimers = 50
			stores := make([]tracestore.Store, claimers)
			for i := range stores {
				stores[i] = env.Open()
			}
			// round races every claimer for k at once and returns the
			// winners' release funcs.
			round := func(ttl time.Duration) []func() {
				var (
					mu      sync.Mutex
					winners []func()
					start   = make(chan struct{})
					wg      sync.WaitGroup
				)
				for _, s := range stores {
					wg.Go(func() {
						<-start
						release, ok, err := s.Claim(ctx, k, "", ttl)
						assert.NoError(t, err)
						if ok {
							mu.Lock()
							winners = append(winners, release)
							mu.Unlock()
						}
					})
				}
				close(start)
				wg.Wait()
				return winners
			}
			w := round(long)
			require.Len(t, w, 1, "first round")
			require.Empty(t, round(long), "while the winner holds the claim")
			w[0]()
			w = round(long)
			require.Len(t, w, 1, "after release")
			w[0]()
			// A holder that crashes: its short claim lapses, then everyone
			// races again.
			stale, ok, err := stores[0].Claim(ctx, k, "", short)
			require.NoError(t, err)
			require.True(t, ok)
			env.Advance(short + 50*time.Millisecond)
			w = round(long)
			require.Len(t, w, 1, "after the claim expired unreleased")
			stale()
			require.Empty(t, round(long), "after a stale release")
			w[0]()
		}},
		{"duplicates in flight reach the remote side once", long, func(t *testing.T, env Env) {
			// The pattern the handler follows: look, claim, look again,
			// call, put, release; losers poll until the record appears.
			inFlight(t, env, func(s tracestore.Store, _ string, trace func() string) (string, error) {
				return traceOnce(ctx, s, k, trace)
			})
		}},
		{"claim-and-get takes a free claim and tells whether a record exists", long, func(t *testing.T, env Env) {
			s := env.Open()
			cg := s.(tracestore.ClaimGetter)
			release, won, _, found, err := cg.ClaimGet(ctx, k, "owner-a", long)
			require.NoError(t, err)
			require.True(t, won)
			assert.False(t, found)
			_, other, _, _, err := env.Open().(tracestore.ClaimGetter).ClaimGet(ctx, k, "owner-b", long)
			require.NoError(t, err)
			assert.False(t, other, "held by owner-a")
			release()
			want := rec("tok-cg")
			require.NoError(t, s.Put(ctx, k, want))
			release, won, got, found, err := env.Open().(tracestore.ClaimGetter).ClaimGet(ctx, k, "owner-b", long)
			require.NoError(t, err)
			require.True(t, won, "released")
			require.True(t, found)
			assert.Equal(t, want.WaybillToken, got.WaybillToken)
			assert.Equal(t, want.GoodsHash, got.GoodsHash)
			assert.True(t, want.TracedAt.Equal(got.TracedAt))
			_, lost, _, found, err := cg.ClaimGet(ctx, k, "owner-c", long)
			require.NoError(t, err)
			assert.False(t, lost, "held by owner-b")
			assert.True(t, found, "a claim that is not won still reports the record")
			release()
		}},
		{"the one-step forms fail on a canceled context", long, func(t *testing.T, env Env) {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			s := env.Open()
			_, won, _, _, err := s.(tracestore.ClaimGetter).ClaimGet(cctx, k, "owner-a", long)
			assert.ErrorIs(t, err, context.Canceled)
			assert.False(t, won)
			assert.ErrorIs(t, s.(tracestore.PutReleaser).PutRelease(cctx, k, rec("tok"), "owner-a"), context.Canceled)
			_, ok, err := env.Open().Get(ctx, k)
			require.NoError(t, err)
			assert.False(t, ok)
		}},
		{"duplicates in flight through the one-step forms reach the remote side once", long, func(t *testing.T, env Env) {
			inFlight(t, env, func(s tracestore.Store, owner string, trace func() string) (string, error) {
				return traceOnceOneStep(ctx, s, k, owner, trace)
			})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, newEnv(t, c.ttl))
		})
	}
}

// traceOnce returns the token stored under key, calling trace to make it when
// there is none, with at most one caller tracing at a time.
func traceOnce(ctx context.Context, s tracestore.Store, key tracestore.Key, trace func() string) (string, error) {
	deadline := time.Now().Add(time.Minute) // a hang fails instead of blocking the test binary
	for time.Now().Before(deadline) {
		if rec, ok, err := s.Get(ctx, key); err != nil || ok {
			return rec.WaybillToken, err
		}
		release, ok, err := s.Claim(ctx, key, "", long)
		if err != nil {
			return "", err
		}
		if !ok {
			time.Sleep(time.Millisecond)
			continue
		}
		defer release()
		if rec, ok, err := s.Get(ctx, key); err != nil || ok {
			return rec.WaybillToken, err
		}
		tok := trace()
		return tok, s.Put(ctx, key, tracestore.Record{WaybillToken: tok})
	}
	return "", errors.New("no record appeared within a minute")
}

// Keys returns n distinct keys shaped like real ones, for benchmarks.
func Keys(n int) []tracestore.Key {
	keys := make([]tracestore.Key, n)
	for i := range keys {
		keys[i] = tracestore.Key{AppID: "wx0001", WaybillID: fmt.Sprintf("SF%010d", i), TransID: "4200000000"}
	}
	return keys
}

// Record is a record of typical size, for benchmarks.
var Record = tracestore.Record{
	WaybillToken: "MLHRcUUzVjx0aP4eFtnOD9gD9Sv0XLr1UMcMHTC-HOs",
	GoodsHash:    "0123456789abcdef0123456789abcdef",
	TracedAt:     time.Date(2026, 3, 1, 8, 30, 15, 0, time.UTC),
}

// traceOnceOneStep is traceOnce as the handler does it with the one-step
// forms: claim and read, call, put and release.
func traceOnceOneStep(ctx context.Context, s tracestore.Store, key tracestore.Key, owner string, trace func() string) (string, error) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		release, won, rec, ok, err := s.(tracestore.ClaimGetter).ClaimGet(ctx, key, owner, time.Minute)
		if err != nil {
			return "", err
		}
		if ok {
			if won {
				release()
			}
			return rec.WaybillToken, nil
		}
		if !won {
			time.Sleep(time.Millisecond)
			continue
		}
		tok := trace()
		return tok, s.(tracestore.PutReleaser).PutRelease(ctx, key, tracestore.Record{WaybillToken: tok}, owner)
	}
	return "", errors.New("no record appeared within a minute")
}

// inFlight runs 30 workers, each on its own handle, through once at the
// same moment, and checks that the remote side was called once and every
// worker got its token.
func inFlight(t *testing.T, env Env, once func(s tracestore.Store, owner string, trace func() string) (string, error)) {
	const workers = 30
	var calls atomic.Int32
	tokens := make([]string, workers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range workers {
		s := env.Open()
		wg.Go(func() {
			<-start
			tok, err := once(s, fmt.Sprintf("owner-%d", i), func() string {
				calls.Add(1)
				return "tok-only"
			})
			assert.NoError(t, err)
			tokens[i] = tok
		})
	}
	close(start)
	wg.Wait()
	assert.Equal(t, int32(1), calls.Load(), "remote calls")
	for i, tok := range tokens {
		assert.Equal(t, "tok-only", tok, "worker %d", i)
	}
}

// BenchGet measures Get hits on s, one at a time and in parallel, over 1000
// keys it stores first: the same benchmark for every shared store.
func BenchGet(b *testing.B, s tracestore.Store) {
	ctx := context.Background()
	const n = 1000
	keys := Keys(n)
	for _, k := range keys {
		if err := s.Put(ctx, k, Record); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok, err := s.Get(ctx, keys[i%n]); !ok || err != nil {
				b.Fatal(ok, err)
			}
			i++
		}
	})
	b.Run("HitParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, ok, err := s.Get(ctx, keys[i%n]); !ok || err != nil {
					b.Error(ok, err)
					return
				}
				i++
			}
		})
	})
}
