package waybill

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/tracestore"
)

func withStore(store tracestore.Store) func(*Config) {
	return func(c *Config) { c.TraceStore = store; c.ClaimPoll = time.Millisecond }
}

func TestDuplicateReusesStoredToken(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, withStore(tracestore.NewMemory(tracestore.MemoryConfig{})))
	ev := testevent.Valid("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "a redelivery")

	assert.Equal(t, 1, tr.callsFor("SF100"), "the duplicate must not call WeChat")
	out := pub.On(event.WaybillTracedTopic)
	require.Len(t, out, 2)
	assert.Equal(t, out[0].UUID, out[1].UUID)
	assert.Equal(t, string(out[0].Payload), string(out[1].Payload), "the very same event, traced_at included")
	assert.Equal(t, int64(1), h.Stats().Deduplicated)
}

func TestChangedGoodsUpdateInsteadOfTrace(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	store := tracestore.NewMemory(tracestore.MemoryConfig{})
	h := newTestHandler(t, tr, pub, withStore(store))
	ev := testevent.Valid("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))

	ev.Goods = append(ev.Goods, event.Goods{Name: "赠品 茶杯", ImageURL: "https://img.example.cn/cup.jpg"})
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "same new goods again: nothing to update")

	assert.Equal(t, 1, tr.callsFor("SF100"), "trace_waybill once")
	assert.Equal(t, 1, tr.callsFor("update:tok-wxapp1-SF100"), "update_waybill_goods once")
	rec, ok, err := store.Get(context.Background(), tracestore.Key{AppID: "wxapp1", WaybillID: "SF100", TransID: ev.TransID})
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, event.GoodsFingerprint(ev.Goods), rec.GoodsHash)
	assert.Len(t, pub.On(event.WaybillTracedTopic), 3)
	assert.Equal(t, Stats{Traced: 3, Deduplicated: 2, GoodsUpdates: 1}, h.Stats())
}

func TestConcurrentDuplicatesMakeOneCall(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, withStore(tracestore.NewMemory(tracestore.MemoryConfig{})))
	ev := testevent.Valid("order-1", "SF100")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { assert.NoError(t, h.Handle(msgOf(t, ev))) })
	}
	wg.Wait()
	assert.Equal(t, 1, tr.callsFor("SF100"))
	assert.Len(t, pub.On(event.WaybillTracedTopic), 20)
}

// failingStore is a tracestore.Store whose every operation fails, as Redis does
// when it is unreachable.
type failingStore struct{}

func (failingStore) Get(context.Context, tracestore.Key) (tracestore.Record, bool, error) {
	return tracestore.Record{}, false, errors.New("connection refused")
}
func (failingStore) Put(context.Context, tracestore.Key, tracestore.Record) error {
	return errors.New("connection refused")
}
func (failingStore) Claim(context.Context, tracestore.Key, string, time.Duration) (func(), bool, error) {
	return nil, false, errors.New("connection refused")
}

func TestStoreFaultLeavesEventForRedelivery(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, withStore(failingStore{}))
	err := h.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))
	require.ErrorContains(t, err, "connection refused")
	assert.Zero(t, tr.callsFor("SF100"), "without knowing, do not spend the buyer's quota")
	assert.Empty(t, pub.On(deadletter.DefaultTopic), "a store fault is transient: never dead-lettered")
}

func TestFailedTraceReleasesClaim(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(40003))
	h := newTestHandler(t, tr, pub, withStore(tracestore.NewMemory(tracestore.MemoryConfig{})))
	ev := testevent.Valid("order-1", "SF100")
	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.Len(t, pub.On(deadletter.DefaultTopic), 1)

	// replay.Replayed after the cause was fixed: the claim is free again at once.
	done := make(chan error, 1)
	go func() { done <- h.Handle(msgOf(t, ev)) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the failed trace left its claim held")
	}
	assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
	assert.Equal(t, 2, tr.callsFor("SF100"))
}
