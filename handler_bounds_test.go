package waybill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	_ "time/tzdata" // America/New_York on any machine

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/internal/wait"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/wechat"
)

// These tests keep the production wait budget (25 s) and, unless a row says
// otherwise, the production retry timing; synctest makes the hours pass at
// once.

// TestWaitingAnswersWithoutParkingSpaceTheirCalls: without parking, an event
// that must wait longer than the budget is left for redelivery, and its
// redeliveries make no call before its time. Before, each redelivery called
// WeChat again about once a second.
func TestWaitingAnswersWithoutParkingSpaceTheirCalls(t *testing.T) {
	t.Run("931023: NotYetAttempts calls, NotYetDelay apart, then a dead letter", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", repeatErr(wechatErr(931023), 1000)...)
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry = RetryPolicy{} }) // 1 h, 24 attempts
			n, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 10_000)
			require.NoError(t, err, "after %d deliveries", n)
			times := tr.timesOf("SF100")
			require.Len(t, times, 24, "calls")
			for i := 1; i < len(times); i++ {
				assert.GreaterOrEqual(t, times[i].Sub(times[i-1]), time.Hour, "call %d", i+1)
			}
			dl := testpub.OnlyDeadLetter(t, pub)
			assert.Equal(t, deadletter.ReasonNotYetExhausted, dl.Reason)
			assert.Equal(t, 24, dl.Attempts)
			assert.Zero(t, h.memo.len(), "the memo forgets an event that left")
		})
	})
	t.Run("45011: one call per minute", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", repeatErr(wechatErr(45011), 3)...)
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry = RetryPolicy{} })
			time.Sleep(50 * time.Second) // late in a minute: the wait passes the budget's end
			_, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 1000)
			require.NoError(t, err)
			times := tr.timesOf("SF100")
			require.Len(t, times, 4)
			for i := 1; i < len(times); i++ {
				assert.True(t, times[i].Truncate(time.Minute).After(times[i-1]), "call %d in the same minute as the one before", i+1)
			}
			assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
		})
	})
	t.Run("45009: no call before the reset", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", wechatErr(45009))
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry = RetryPolicy{} })
			_, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 10_000)
			require.NoError(t, err)
			times := tr.timesOf("SF100")
			require.Len(t, times, 2)
			assert.False(t, times[1].Before(nextShanghaiMidnight(times[0])), "second call at %s", times[1])
			assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
		})
	})
	t.Run("a transient fault past the budget: no call before the backoff", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", busy(2)...)
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Backoff = func(int) time.Duration { return time.Minute } })
			n, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 1000)
			require.NoError(t, err)
			times := tr.timesOf("SF100")
			require.Len(t, times, 3)
			assert.GreaterOrEqual(t, times[1].Sub(times[0]), time.Minute)
			assert.Greater(t, n, 2)
		})
	})
}

// TestDailyQuotaAtMidnight: a 45009 marks spent only the day in which its
// call was admitted, and in the first minutes after a reset it means "try
// again shortly".
func TestDailyQuotaAtMidnight(t *testing.T) {
	midnight := time.Date(2026, 12, 1, 0, 0, 0, 0, shanghai)
	ctx := context.Background()
	run := func(t *testing.T, admitted, answered time.Time) (*ratelimit.Limiter, error) {
		clock := testclock.New(admitted)
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", wechatErr(45009))
		tr.remain["wxapp1"] = 0 // quota/get still reports the old day
		tr.during = func(context.Context, string, int) error { clock.Set(answered); return nil }
		lim, err := ratelimit.New(ratelimit.Config{})
		require.NoError(t, err)
		h := newTestHandler(t, tr, pub, func(c *Config) {
			c.Retry = RetryPolicy{}
			c.Limiter = lim
			c.Now = clock.Now
		})
		err = h.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))
		assert.Equal(t, 1, tr.callsFor("SF100"))
		assert.Empty(t, pub.On(deadletter.DefaultTopic))
		return lim, err
	}
	t.Run("admitted before midnight, answered after", func(t *testing.T) {
		lim, err := run(t, midnight.Add(-100*time.Millisecond), midnight.Add(100*time.Millisecond))
		require.ErrorIs(t, err, ErrWaitLimit)
		// Judged in the old day, whose quota is spent: back in the new
		// window's first minutes (QuotaSpread), not a day later.
		assert.Contains(t, err.Error(), "not before "+midnight.UTC().Format("2006-01-02T15:0"))
		d, err := lim.Allow(ctx, "wxapp1", "o-other", midnight.Add(time.Second))
		require.NoError(t, err)
		assert.True(t, d.Allowed, "the new day was marked spent")
	})
	t.Run("WeChat's reset lags ours", func(t *testing.T) {
		lim, err := run(t, midnight.Add(30*time.Second), midnight.Add(30*time.Second))
		require.ErrorIs(t, err, ErrWaitLimit)
		assert.Contains(t, err.Error(), "not before "+midnight.Add(30*time.Second+QuotaGraceRetry).UTC().Format(time.RFC3339))
		d, err := lim.Allow(ctx, "wxapp1", "o-other", midnight.Add(31*time.Second))
		require.NoError(t, err)
		assert.True(t, d.Allowed, "a 45009 just after the reset closed the merchant for the day")
	})
	t.Run("mid-day, confirmed by quota/get: the day is spent", func(t *testing.T) {
		noon := midnight.Add(12 * time.Hour)
		lim, err := run(t, noon, noon)
		require.ErrorIs(t, err, ErrWaitLimit)
		d, err := lim.Allow(ctx, "wxapp1", "o-other", noon.Add(time.Second))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, ratelimit.ReasonAppDaily, d.Reason)
	})
}

// outageStore wraps a TraceStore: it can fail the Get after a won claim
// (a store outage mid-delivery) and lose the releases made meanwhile.
type outageStore struct {
	tracestore.Store
	mu          sync.Mutex
	failGets    int // the next Gets that fail
	lostRelease bool
	bad         map[tracestore.Key]bool // keys whose record cannot be read
}

func (s *outageStore) Get(ctx context.Context, key tracestore.Key) (tracestore.Record, bool, error) {
	s.mu.Lock()
	fail, bad := s.failGets > 0, s.bad[key]
	if fail {
		s.failGets--
	}
	s.mu.Unlock()
	if fail {
		return tracestore.Record{}, false, errors.New("store unreachable")
	}
	if bad {
		return tracestore.Record{}, false, fmt.Errorf("decode %s: %w", key, tracestore.ErrBadRecord)
	}
	return s.Store.Get(ctx, key)
}

func (s *outageStore) Put(ctx context.Context, key tracestore.Key, rec tracestore.Record) error {
	s.mu.Lock()
	delete(s.bad, key)
	s.mu.Unlock()
	return s.Store.Put(ctx, key, rec)
}

func (s *outageStore) Claim(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (func(), bool, error) {
	release, ok, err := s.Store.Claim(ctx, key, owner, ttl)
	if !ok {
		return release, ok, err
	}
	return func() {
		s.mu.Lock()
		lost := s.lostRelease
		s.mu.Unlock()
		if !lost {
			release()
		}
	}, true, nil
}

// TestClaimWaitsAreBounded: waiting for another handler's claim ends with
// the budget, and an event never waits on the claim its own earlier
// delivery left behind.
func TestClaimWaitsAreBounded(t *testing.T) {
	key := tracestore.Key{AppID: "wxapp1", WaybillID: "SF100", TransID: testevent.Valid("o", "w").TransID}
	t.Run("a crashed process's claim", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := tracestore.NewMemory(tracestore.MemoryConfig{})
			_, ok, err := store.Claim(context.Background(), key, "crashed-process", 2*time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
			msg := msgOf(t, testevent.Valid("order-1", "SF100"))
			start := time.Now()
			err = h.Handle(msg.Copy())
			require.ErrorIs(t, err, ErrWaitLimit)
			assert.LessOrEqual(t, time.Since(start), 25*time.Second, "held its partition past MaxWaitInPlace")
			assert.Zero(t, tr.callsFor("SF100"))
			_, err = redeliver(h, msg, 100)
			require.NoError(t, err)
			assert.Equal(t, 1, tr.callsFor("SF100"), "traced once the claim lapsed")
			assert.GreaterOrEqual(t, time.Since(start), 2*time.Minute)
		})
	})
	t.Run("its own earlier delivery's claim", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// The first delivery wins the claim, then the store fails, and
			// the release is lost with it.
			store := &outageStore{Store: tracestore.NewMemory(tracestore.MemoryConfig{}), lostRelease: true}
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = &onceAfterClaim{outageStore: store} }) // the default 15 s ClaimTTL
			msg := msgOf(t, testevent.Valid("order-1", "SF100"))
			require.Error(t, h.Handle(msg.Copy()))
			store.mu.Lock()
			store.lostRelease = false
			store.mu.Unlock()
			start := time.Now()
			require.NoError(t, h.Handle(msg.Copy()), "the redelivery")
			assert.Less(t, time.Since(start), time.Second, "waited on its own claim")
			assert.Equal(t, 1, tr.callsFor("SF100"))
		})
	})
}

// onceAfterClaim fails the first Get that follows a won claim.
type onceAfterClaim struct {
	*outageStore
	mu              sync.Mutex
	claimed, failed bool
}

func (s *onceAfterClaim) Claim(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (func(), bool, error) {
	release, ok, err := s.outageStore.Claim(ctx, key, owner, ttl)
	s.mu.Lock()
	if ok && !s.failed {
		s.claimed = true
	}
	s.mu.Unlock()
	return release, ok, err
}

func (s *onceAfterClaim) Get(ctx context.Context, key tracestore.Key) (tracestore.Record, bool, error) {
	s.mu.Lock()
	fail := s.claimed && !s.failed
	s.failed = s.failed || fail
	s.mu.Unlock()
	if fail {
		return tracestore.Record{}, false, errors.New("store unreachable")
	}
	return s.outageStore.Get(ctx, key)
}

// TestClaimIsRenewedDuringALongCall: a call longer than ClaimTTL keeps its
// claim, so a duplicate on another handler waits for the token instead of
// calling too.
func TestClaimIsRenewedDuringALongCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := tracestore.NewMemory(tracestore.MemoryConfig{})
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.during = func(ctx context.Context, _ string, n int) error {
			if n == 0 {
				return wait.Sleep(ctx, 20*time.Second) // past the 15 s ClaimTTL
			}
			return nil
		}
		a := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
		b := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
		var wg sync.WaitGroup
		wg.Go(func() { assert.NoError(t, a.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))) })
		time.Sleep(time.Second)
		wg.Go(func() { assert.NoError(t, b.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))) })
		wg.Wait()
		assert.Equal(t, 1, tr.callsFor("SF100"), "the duplicate called while the first call ran")
		assert.Len(t, pub.On(event.WaybillTracedTopic), 2)
		assert.Equal(t, int64(1), b.Stats().Deduplicated)
	})
}

// TestSuccessNeedsAToken: an answer without a waybill_token is a transient
// failure, never a published trace; a Tracer answering (nil, nil) neither
// panics nor leaves its claim held.
func TestSuccessNeedsAToken(t *testing.T) {
	for name, empty := range map[string]*wechat.TraceWaybillResponse{"empty token": {}, "nil response": nil} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := tracestore.NewMemory(tracestore.MemoryConfig{})
				tr, pub := newScriptedTracer(), &testpub.Recorder{}
				var answers int
				tr.answer = func(appid, waybill string) *wechat.TraceWaybillResponse {
					answers++
					if answers <= 2 {
						return empty
					}
					return &wechat.TraceWaybillResponse{WaybillToken: "tok-late"}
				}
				h := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
				require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
				assert.Equal(t, 3, tr.callsFor("SF100"))
				traced := pub.On(event.WaybillTracedTopic)
				require.Len(t, traced, 1)
				assert.Contains(t, string(traced[0].Payload), `"waybill_token":"tok-late"`)
				key := tracestore.Key{AppID: "wxapp1", WaybillID: "SF100", TransID: testevent.Valid("o", "w").TransID}
				release, ok, err := store.Claim(context.Background(), key, "another", time.Minute)
				require.NoError(t, err)
				assert.True(t, ok, "the claim was left held")
				release()
			})
		})
	}
}

// TestUnreadableRecordIsOverwritten: a record the store cannot read is
// traced again and overwritten, not a partition stalled for ever.
func TestUnreadableRecordIsOverwritten(t *testing.T) {
	for _, oneStep := range []bool{false, true} {
		t.Run(fmt.Sprintf("one step %v", oneStep), func(t *testing.T) {
			key := tracestore.Key{AppID: "wxapp1", WaybillID: "SF100", TransID: testevent.Valid("o", "w").TransID}
			mem := tracestore.NewMemory(tracestore.MemoryConfig{})
			outage := &outageStore{Store: mem, bad: map[tracestore.Key]bool{key: true}}
			var store tracestore.Store = outage
			if oneStep {
				store = oneStepStore{outage, mem}
			}
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))), "a duplicate")
			assert.Equal(t, 1, tr.callsFor("SF100"), "the second reads the overwritten record")
			assert.Len(t, pub.On(event.WaybillTracedTopic), 2)
		})
	}
}

// oneStepStore is an outageStore with the one-step forms, made of its own
// steps, so that its faults reach the handler's one-step path.
type oneStepStore struct {
	*outageStore
	mem *tracestore.Memory
}

func (s oneStepStore) ClaimGet(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (func(), bool, tracestore.Record, bool, error) {
	return tracestore.ClaimThenGet(ctx, s.outageStore, key, owner, ttl)
}

func (s oneStepStore) PutRelease(ctx context.Context, key tracestore.Key, rec tracestore.Record, owner string) error {
	if err := s.outageStore.Put(ctx, key, rec); err != nil {
		return err
	}
	return s.mem.PutRelease(ctx, key, rec, owner)
}

// countingStore counts the trace store's calls by method.
type countingStore struct {
	*tracestore.Memory
	mu    sync.Mutex
	calls map[string]int
}

func (s *countingStore) count(m string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[m]++
}

func (s *countingStore) Get(ctx context.Context, k tracestore.Key) (tracestore.Record, bool, error) {
	s.count("Get")
	return s.Memory.Get(ctx, k)
}

func (s *countingStore) Put(ctx context.Context, k tracestore.Key, r tracestore.Record) error {
	s.count("Put")
	return s.Memory.Put(ctx, k, r)
}

func (s *countingStore) Claim(ctx context.Context, k tracestore.Key, o string, ttl time.Duration) (func(), bool, error) {
	s.count("Claim")
	return s.Memory.Claim(ctx, k, o, ttl)
}

func (s *countingStore) ClaimGet(ctx context.Context, k tracestore.Key, o string, ttl time.Duration) (func(), bool, tracestore.Record, bool, error) {
	s.count("ClaimGet")
	release, won, rec, ok, err := s.Memory.ClaimGet(ctx, k, o, ttl)
	if won {
		inner := release
		release = func() { s.count("release"); inner() }
	}
	return release, won, rec, ok, err
}

func (s *countingStore) PutRelease(ctx context.Context, k tracestore.Key, r tracestore.Record, o string) error {
	s.count("PutRelease")
	return s.Memory.PutRelease(ctx, k, r, o)
}

// TestTraceStoreRoundTrips: with a store that has the one-step forms, a new
// event costs the store two calls (claim-and-read, put-and-release), where
// look, claim, look, put and release were five; a duplicate costs one call
// and a release.
func TestTraceStoreRoundTrips(t *testing.T) {
	store := &countingStore{Memory: tracestore.NewMemory(tracestore.MemoryConfig{}), calls: map[string]int{}}
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, func(c *Config) { c.TraceStore = store })
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	assert.Equal(t, map[string]int{"ClaimGet": 1, "PutRelease": 1}, store.calls)
	clear(store.calls)
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))), "a duplicate")
	assert.Equal(t, map[string]int{"ClaimGet": 1, "release": 1}, store.calls)
	assert.Equal(t, 1, tr.callsFor("SF100"))
	assert.Len(t, pub.On(event.WaybillTracedTopic), 2)
}

// TestCallsWeChatNeverSawAreRefunded: a call that never reached WeChat
// (refused connection, failed token fetch) is given back to the quotas and
// is not an attempt.
func TestCallsWeChatNeverSawAreRefunded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		notSent := fmt.Errorf("dial tcp: connection refused: %w", wechat.ErrNotSent)
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", repeatErr(notSent, 5)...)
		lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{UserDaily: 10, Rate: -1}})
		require.NoError(t, err)
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Limiter = lim })
		require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
		assert.Equal(t, 6, tr.callsFor("SF100"))
		d, err := lim.Allow(context.Background(), "wxapp1", "o-buyer-1", time.Now())
		require.NoError(t, err)
		assert.Equal(t, int64(10-1-1), d.UserRemaining, "the buyer was charged for calls WeChat never saw")

		tr.On("SF200", fmt.Errorf("token for wxapp1: %w", errors.Join(wechat.ErrNotSent, wechat.ErrNotRefreshable)))
		require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-2", "SF200"))))
		dl := testpub.OnlyDeadLetter(t, pub)
		assert.Equal(t, deadletter.ReasonConfiguration, dl.Reason)
		assert.Equal(t, 0, dl.Attempts, "no trace_waybill reached WeChat")
	})
}

// TestParkedCopiesAreKeyedByOrder: events from producers that set no
// message UUID spread over the delay topic's partitions by order id.
func TestParkedCopiesAreKeyedByOrder(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(931023))
	h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{}; c.Retry.NotYetDelay = time.Hour })
	in := msgOf(t, testevent.Valid("order-7", "SF100"))
	in.UUID = ""
	require.NoError(t, h.Handle(in))
	parked := pub.On("order.shipped.delay.1h0m0s")
	require.Len(t, parked, 1)
	key, err := kafka.PartitionKey("order.shipped.delay.1h0m0s", parked[0])
	require.NoError(t, err)
	assert.Equal(t, "order-7", key)
}

// goodsTracer checks that update_waybill_goods runs under the waybill's
// claim.
type goodsTracer struct {
	*scriptedTracer
	store   tracestore.Store
	key     tracestore.Key
	claimed bool
}

func (g *goodsTracer) UpdateWaybillGoods(ctx context.Context, appid string, req *wechat.UpdateWaybillGoodsRequest) error {
	_, ok, err := g.store.Claim(ctx, g.key, "a duplicate elsewhere", time.Minute)
	g.claimed = err == nil && !ok
	return g.scriptedTracer.UpdateWaybillGoods(ctx, appid, req)
}

// TestGoodsUpdatesHaveTheirOwnPath: update_waybill_goods holds the claim,
// is counted by GoodsLimiter rather than trace_waybill's Limiter, and has a
// breaker of its own.
func TestGoodsUpdatesHaveTheirOwnPath(t *testing.T) {
	ctx := context.Background()
	store := tracestore.NewMemory(tracestore.MemoryConfig{})
	key := tracestore.Key{AppID: "wxapp1", WaybillID: "SF100", TransID: testevent.Valid("o", "w").TransID}
	tr := &goodsTracer{scriptedTracer: newScriptedTracer(), store: store, key: key}
	pub := &testpub.Recorder{}
	traceLim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: -1}})
	require.NoError(t, err)
	goodsLim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: -1}})
	require.NoError(t, err)
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.TraceStore, c.Limiter, c.GoodsLimiter = store, traceLim, goodsLim
		c.Breaker = BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour}
		c.Parking = &ParkingConfig{}
	})
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	// trace_waybill's breaker opens on another waybill's fault; the goods
	// update must still go through.
	tr.On("SF999", wechatErr(-1))
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-9", "SF999"))))
	require.Equal(t, gobreaker.StateOpen, h.BreakerState("wxapp1"))
	changed := testevent.Valid("order-1", "SF100")
	changed.Goods[0].Name = "新茶"
	require.NoError(t, h.Handle(msgOf(t, changed)))
	assert.True(t, tr.claimed, "update_waybill_goods ran without the claim")
	assert.Equal(t, int64(1), h.Stats().GoodsUpdates)
	remaining := func(lim *ratelimit.Limiter) int64 {
		d, err := lim.Allow(ctx, "wxapp1", "o-buyer-1", time.Now())
		require.NoError(t, err)
		return d.UserRemaining
	}
	assert.Equal(t, int64(100-2-1), remaining(traceLim), "trace_waybill's quota: two traces")
	assert.Equal(t, int64(100-1-1), remaining(goodsLim), "update_waybill_goods' quota: one update")
	assert.Equal(t, gobreaker.StateClosed, h.breakers.state("wxapp1", endpointGoods))
}

// capSizePublisher refuses messages above max bytes, as a Kafka producer
// does above its MaxMessageBytes.
type capSizePublisher struct {
	testpub.Recorder
	max int
}

func (p *capSizePublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		n := len(m.Payload)
		for k, v := range m.Metadata {
			n += len(k) + len(v)
		}
		if n > p.max {
			return fmt.Errorf("kafka: message of %d bytes is larger than %d", n, p.max)
		}
	}
	return p.Recorder.Publish(topic, msgs...)
}

// TestPoisonEventsNeverStall: an event too large, or not UTF-8, is
// dead-lettered before any call; a dead letter too large for the topic is
// published reduced; an outcome that cannot be published is published again
// without a second call.
func TestPoisonEventsNeverStall(t *testing.T) {
	t.Run("too large", func(t *testing.T) {
		tr := newScriptedTracer()
		pub := &capSizePublisher{max: 1_000_000}
		h := newTestHandler(t, tr, pub, nil)
		ev := testevent.Valid("order-1", "SF100")
		ev.OrderDetailPath = "pages/o?x=" + strings.Repeat("a", 2<<20)
		in := msgOf(t, ev)
		in.Metadata.Set("trace_id", "abc")
		require.NoError(t, h.Handle(in))
		assert.Zero(t, tr.callsFor("SF100"))
		dead := pub.On(deadletter.DefaultTopic)
		require.Len(t, dead, 1)
		dl, err := deadletter.Parse(dead[0])
		require.NoError(t, err)
		assert.Equal(t, deadletter.ReasonInvalidEvent, dl.Reason)
		assert.Contains(t, dl.Errmsg, "more than MaxEventBytes")
		assert.Contains(t, dl.Dropped, fmt.Sprintf("payload (%d bytes)", len(in.Payload)))
		assert.Empty(t, dead[0].Payload)
		assert.Equal(t, "abc", dead[0].Metadata.Get("trace_id"), "small headers stay")
	})
	t.Run("allowed in, refused by WeChat, too large to dead-letter whole", func(t *testing.T) {
		tr := newScriptedTracer()
		tr.On("SF100", wechatErr(47001))
		pub := &capSizePublisher{max: 1_000_000}
		// A topic whose max.message.bytes is 100 kB, an event of 500 kB.
		pub.max = 100_000
		h := newTestHandler(t, tr, pub, func(c *Config) { c.MaxEventBytes = 1 << 20; c.MaxDeadLetterBytes = 100_000 })
		ev := testevent.Valid("order-1", "SF100")
		ev.Goods = nil
		for range event.MaxGoodsItems {
			ev.Goods = append(ev.Goods, event.Goods{Name: strings.Repeat("茶", event.MaxTextRunes), ImageURL: "https://x/" + strings.Repeat("y", 2000)})
		}
		in := msgOf(t, ev)
		require.Greater(t, len(in.Payload), 500_000)
		require.NoError(t, ev.Validate())
		require.NoError(t, h.Handle(in))
		assert.Equal(t, 1, tr.callsFor("SF100"))
		dead := pub.On(deadletter.DefaultTopic)
		require.Len(t, dead, 1)
		assert.Equal(t, "order-1", dead[0].Metadata.Get(deadletter.HeaderDeadKey))
		assert.NotEmpty(t, dead[0].Metadata.Get(deadletter.HeaderDeadDropped))
	})
	t.Run("invalid UTF-8", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		h := newTestHandler(t, tr, pub, nil)
		payload := []byte(strings.Replace(string(testevent.JSON(t, func(*event.OrderShipped) {})), "十年陈香", "十年\xff陈香", 1))
		require.NoError(t, h.Handle(message.NewMessage("in-1", payload)))
		assert.Zero(t, tr.callsFor("SF100"))
		dead := pub.On(deadletter.DefaultTopic)
		require.Len(t, dead, 1)
		assert.Contains(t, dead[0].Metadata.Get(deadletter.HeaderDeadErrmsg), "not valid UTF-8")

		custom := testevent.Valid("order-2", "SF200")
		custom.Goods[0].Name = "茶\xff"
		assert.ErrorContains(t, custom.Validate(), "goods[0].name: not valid UTF-8")
	})
	t.Run("an outcome that cannot be published is not traced again", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{Fail: errors.New("broker down")}
		h := newTestHandler(t, tr, pub, nil)
		msg := msgOf(t, testevent.Valid("order-1", "SF100"))
		require.Error(t, h.Handle(msg.Copy()))
		require.Error(t, h.Handle(msg.Copy()))
		pub.SetFail(nil)
		require.NoError(t, h.Handle(msg.Copy()))
		assert.Equal(t, 1, tr.callsFor("SF100"))
		assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
	})
}

// logRecorder keeps Info lines' messages and fields.
type logRecorder struct {
	watermill.NopLogger
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Info(msg string, fields watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf("%s %v", msg, fields))
}

func (l *logRecorder) With(watermill.LogFields) watermill.LoggerAdapter { return l }

func (l *logRecorder) has(sub ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		ok := true
		for _, s := range sub {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestSlowCallIsBoundedByTheBudget: a call WeChat holds is cut at the end
// of the budget, and the log says what happens next.
func TestSlowCallIsBoundedByTheBudget(t *testing.T) {
	hold := func(ctx context.Context, _ string, n int) error {
		if n == 0 {
			<-ctx.Done() // WeChat holds the first call
			return ctx.Err()
		}
		return nil
	}
	t.Run("without parking", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub, log := newScriptedTracer(), &testpub.Recorder{}, &logRecorder{}
			tr.during = hold
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Logger = log })
			msg := msgOf(t, testevent.Valid("order-1", "SF100"))
			start := time.Now()
			err := h.Handle(msg.Copy())
			require.ErrorIs(t, err, ErrWaitLimit)
			assert.Equal(t, 25*time.Second, time.Since(start))
			assert.True(t, log.has("leaving event for redelivery", "action:redeliver"), "%v", log.lines)
			_, err = redeliver(h, msg, 10)
			require.NoError(t, err)
			assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
		})
	})
	t.Run("with parking", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub, log := newScriptedTracer(), &testpub.Recorder{}, &logRecorder{}
			tr.during = hold
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Logger = log; c.Parking = &ParkingConfig{} })
			start := time.Now()
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
			assert.Equal(t, 25*time.Second, time.Since(start))
			assert.Len(t, pub.On("order.shipped.delay.1m0s"), 1)
			assert.True(t, log.has("parked event", "action:park"), "%v", log.lines)
			assert.False(t, log.has("action:retry"), "%v", log.lines)
		})
	})
}

// TestBackoffGrowsAcrossDeliveries: an event that keeps meeting transient
// faults does not start its backoff again at 200 ms on every redelivery.
func TestBackoffGrowsAcrossDeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", busy(10_000)...)
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Backoff = nil }) // DefaultBackoff: 200 ms doubling to 30 s
		msg := msgOf(t, testevent.Valid("order-1", "SF100"))
		for start := time.Now(); time.Since(start) < time.Hour; {
			require.ErrorIs(t, h.Handle(msg.Copy()), ErrWaitLimit)
			time.Sleep(time.Second)
		}
		// In place: about 8 calls until the backoff reaches the budget, then
		// one per 30 s (jittered by up to 20 %): at most 8 + 3600/24.
		calls := tr.callsFor("SF100")
		assert.LessOrEqual(t, calls, 8+150, "calls in an hour")
		times := tr.timesOf("SF100")
		for i := 10; i < len(times); i++ {
			assert.GreaterOrEqual(t, times[i].Sub(times[i-1]), 24*time.Second, "calls %d and %d", i, i+1)
		}
		assert.Empty(t, pub.On(deadletter.DefaultTopic), "never dead-lettered for a transient fault")
	})
}

// TestMemoReusesAnOutcomeOnlyForItsMessage: an outcome whose publish failed
// is republished for that message's redelivery only; a corrected event for
// the same order and waybill is judged afresh.
func TestMemoReusesAnOutcomeOnlyForItsMessage(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{Fail: errors.New("broker down")}
	tr.On("SF100", wechatErr(47001))
	h := newTestHandler(t, tr, pub, nil)
	bad := msgOf(t, testevent.Valid("order-1", "SF100"))
	require.Error(t, h.Handle(bad.Copy()))
	pub.SetFail(nil)
	fixed := msgOf(t, testevent.Valid("order-1", "SF100"))
	require.NoError(t, h.Handle(fixed))
	assert.Equal(t, 2, tr.callsFor("SF100"), "the corrected event was not traced")
	assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
	require.NoError(t, h.Handle(bad.Copy()))
	assert.Equal(t, 2, tr.callsFor("SF100"), "the redelivered bad event called again")
	dead := pub.On(deadletter.DefaultTopic)
	require.Len(t, dead, 1)
	assert.Equal(t, bad.UUID, dead[0].UUID)
}

// TestQuotaWindowsOfOtherLengths: in a zone with daylight saving time the
// grace and the spread follow the limiter's own windows, not 24 h days.
func TestQuotaWindowsOfOtherLengths(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	lim, err := ratelimit.New(ratelimit.Config{Location: ny})
	require.NoError(t, err)
	h := newTestHandler(t, newScriptedTracer(), &testpub.Recorder{}, func(c *Config) { c.Retry = RetryPolicy{}; c.Limiter = lim })
	p := h.cfg.Retry
	long := time.Date(2026, 11, 1, 23, 30, 0, 0, ny) // the 25-hour day
	assert.False(t, p.inResetGrace(long), "23:30 on the long day is not just after a reset")
	assert.True(t, p.inResetGrace(time.Date(2026, 3, 9, 0, 5, 0, 0, ny)), "00:05 after the short day")
	d := p.Decide(wechatErr(45009), wechat.ClassDailyQuota, 1, long)
	next := time.Date(2026, 11, 2, 0, 0, 0, 0, ny)
	assert.True(t, !d.Until.Before(next) && d.Until.Before(next.Add(5*time.Minute)), "%s", d.Until)
}

// TestSmoothRateWaitsWithinTheBudget: the smooth rate reserves each call's
// turn, so waiters go one interval apart instead of waking together, and a
// turn beyond the budget ends the delivery at once rather than holding the
// partition for it.
func TestSmoothRateWaitsWithinTheBudget(t *testing.T) {
	t.Run("concurrent waiters get spaced turns", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: 0.5, Burst: 1}}) // one call per 2 s
			require.NoError(t, err)
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Limiter = lim })
			var wg sync.WaitGroup
			for i := range 5 {
				wg.Go(func() {
					assert.NoError(t, h.Handle(msgOf(t, testevent.Valid(fmt.Sprint("order-", i), fmt.Sprint("SF", i)))))
				})
			}
			wg.Wait()
			var times []time.Time
			for i := range 5 {
				times = append(times, tr.timesOf(fmt.Sprint("SF", i))...)
			}
			require.Len(t, times, 5, "one call each: no waiter lost its turn and asked again")
			slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
			for i := 1; i < len(times); i++ {
				assert.Equal(t, 2*time.Second, times[i].Sub(times[i-1]), "turn %d", i+1)
			}
		})
	})
	t.Run("a turn past the budget ends the delivery at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: 1.0 / 60, Burst: 1}}) // one call a minute
			require.NoError(t, err)
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Limiter = lim })
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF1"))))
			start := time.Now()
			second := msgOf(t, testevent.Valid("order-2", "SF2"))
			require.ErrorIs(t, h.Handle(second.Copy()), ErrWaitLimit)
			assert.Zero(t, time.Since(start), "held its partition for a turn it could not have")
			_, err = redeliver(h, second, 100)
			require.NoError(t, err)
			calls := tr.timesOf("SF2")
			require.Len(t, calls, 1)
			assert.GreaterOrEqual(t, calls[0].Sub(tr.timesOf("SF1")[0]), time.Minute)
		})
	})
}

// TestTokenAttemptsCountAcrossDeliveries: a token WeChat keeps rejecting
// ends as a configuration dead letter even when each delivery runs out of
// budget before TokenAttempts.
func TestTokenAttemptsCountAcrossDeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", repeatErr(wechatErr(40001), 1000)...)
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Backoff = func(int) time.Duration { return 30 * time.Second } })
		_, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 100)
		require.NoError(t, err)
		assert.Equal(t, 3, tr.callsFor("SF100"))
		dl := testpub.OnlyDeadLetter(t, pub)
		assert.Equal(t, deadletter.ReasonConfiguration, dl.Reason)
	})
}

// TestInvalidSiblingKeepsTheHistory: dead-lettering an invalid event for the
// same order and waybill does not erase a valid event's not-before time.
func TestInvalidSiblingKeepsTheHistory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", wechatErr(931023))
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry = RetryPolicy{} })
		msg := msgOf(t, testevent.Valid("order-1", "SF100"))
		require.ErrorIs(t, h.Handle(msg.Copy()), ErrWaitLimit)
		invalid := testevent.Valid("order-1", "SF100")
		invalid.OpenID = ""
		require.NoError(t, h.Handle(msgOf(t, invalid)))
		require.Len(t, pub.On(deadletter.DefaultTopic), 1)
		require.ErrorIs(t, h.Handle(msg.Copy()), ErrWaitLimit)
		assert.Equal(t, 1, tr.callsFor("SF100"), "called before its not-before time")
	})
}

// failOnce is a Publisher that fails the first publish to one topic.
type failOnce struct {
	testpub.Recorder
	topic  string
	mu     sync.Mutex
	failed bool
}

func (p *failOnce) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	fail := topic == p.topic && !p.failed
	p.failed = p.failed || fail
	p.mu.Unlock()
	if fail {
		return errors.New("broker down")
	}
	return p.Recorder.Publish(topic, msgs...)
}

// TestFailedParkIsMadeAgainAsMeant: a park whose publish failed is made
// again on redelivery without a call, to the same tier, and still counts.
func TestFailedParkIsMadeAgainAsMeant(t *testing.T) {
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	tr := newScriptedTracer()
	tr.On("SF100", wechatErr(45009))
	tr.remain["wxapp1"] = 1 // one buyer's 45009: the day is not spent
	pub := &failOnce{topic: "order.shipped.delay.window"}
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Parking = &ParkingConfig{}
		c.Now = func() time.Time { return now }
		c.Retry.QuotaReset = nil
	})
	msg := msgOf(t, testevent.Valid("order-1", "SF100"))
	require.Error(t, h.Handle(msg.Copy()))
	require.NoError(t, h.Handle(msg.Copy()))
	assert.Equal(t, 1, tr.callsFor("SF100"), "the redelivery called again")
	parked := pub.On("order.shipped.delay.window")
	require.Len(t, parked, 1, "parked in another tier than the failed park meant")
	assert.Equal(t, "1", parked[0].Metadata.Get(deadletter.HeaderParks))
}
