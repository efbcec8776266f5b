package waybill

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func withStore(store TraceStore) func(*Config) {
	return func(c *Config) { c.Traces = store; c.ClaimPoll = time.Millisecond }
}

func TestDuplicateReusesStoredToken(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	h := newTestHandler(t, tr, pub, withStore(NewMemoryTraceStore(MemoryTraceStoreConfig{})))
	ev := validEvent("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "a redelivery")

	assert.Equal(t, 1, tr.callsFor("SF100"), "the duplicate must not call WeChat")
	out := pub.on(DefaultTracedTopic)
	require.Len(t, out, 2)
	assert.Equal(t, out[0].UUID, out[1].UUID)
	assert.Equal(t, string(out[0].Payload), string(out[1].Payload), "the very same event, traced_at included")
	assert.Equal(t, int64(1), h.Stats().Deduplicated)
}

func TestChangedGoodsUpdateInsteadOfTrace(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	store := NewMemoryTraceStore(MemoryTraceStoreConfig{})
	h := newTestHandler(t, tr, pub, withStore(store))
	ev := validEvent("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))

	ev.Goods = append(ev.Goods, Goods{Name: "赠品 茶杯", ImageURL: "https://img.example.cn/cup.jpg"})
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "same new goods again: nothing to update")

	assert.Equal(t, 1, tr.callsFor("SF100"), "trace_waybill once")
	assert.Equal(t, 1, tr.callsFor("update:tok-wxapp1-SF100"), "update_waybill_goods once")
	rec, ok, err := store.Get(context.Background(), DedupKey{AppID: "wxapp1", WaybillID: "SF100", TransID: ev.TransID})
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, GoodsFingerprint(ev.Goods), rec.GoodsHash)
	assert.Len(t, pub.on(DefaultTracedTopic), 3)
	assert.Equal(t, Stats{Traced: 3, Deduplicated: 2, GoodsUpdates: 1}, h.Stats())
}

func TestConcurrentDuplicatesMakeOneCall(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	h := newTestHandler(t, tr, pub, withStore(NewMemoryTraceStore(MemoryTraceStoreConfig{})))
	ev := validEvent("order-1", "SF100")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { assert.NoError(t, h.Handle(msgOf(t, ev))) })
	}
	wg.Wait()
	assert.Equal(t, 1, tr.callsFor("SF100"))
	assert.Len(t, pub.on(DefaultTracedTopic), 20)
}

// failingStore is a TraceStore whose every operation fails, as Redis does
// when it is unreachable.
type failingStore struct{}

func (failingStore) Get(context.Context, DedupKey) (TraceRecord, bool, error) {
	return TraceRecord{}, false, errors.New("connection refused")
}
func (failingStore) Put(context.Context, DedupKey, TraceRecord) error {
	return errors.New("connection refused")
}
func (failingStore) Claim(context.Context, DedupKey, string, time.Duration) (func(), bool, error) {
	return nil, false, errors.New("connection refused")
}

func TestStoreFaultLeavesEventForRedelivery(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	h := newTestHandler(t, tr, pub, withStore(failingStore{}))
	err := h.Handle(msgOf(t, validEvent("order-1", "SF100")))
	require.ErrorContains(t, err, "connection refused")
	assert.Zero(t, tr.callsFor("SF100"), "without knowing, do not spend the buyer's quota")
	assert.Empty(t, pub.on(DefaultDeadLetterTopic), "a store fault is transient: never dead-lettered")
}

func TestFailedTraceReleasesClaim(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	tr.on("SF100", wechatErr(40003))
	h := newTestHandler(t, tr, pub, withStore(NewMemoryTraceStore(MemoryTraceStoreConfig{})))
	ev := validEvent("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.Len(t, pub.on(DefaultDeadLetterTopic), 1)

	// Replayed after the cause was fixed: the claim is free again at once.
	done := make(chan error, 1)
	go func() { done <- h.Handle(msgOf(t, ev)) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the failed trace left its claim held")
	}
	assert.Len(t, pub.on(DefaultTracedTopic), 1)
	assert.Equal(t, 2, tr.callsFor("SF100"))
}
