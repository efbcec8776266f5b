package waybill

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/tracestore"
)

// recordObservations collects what Config.Observe is told.
type recordObservations struct {
	mu  sync.Mutex
	got []Observation
}

func (r *recordObservations) observe(o Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, o)
}

func (r *recordObservations) take() []Observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got
	r.got = nil
	return out
}

// TestObserve: each outcome, the limiter's answer and the trace store's are
// observed once, with the appid and a bounded detail.
func TestObserve(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	rec := &recordObservations{}
	lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 10, UserDaily: -1, Rate: -1}})
	require.NoError(t, err)
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Observe, c.Limiter = rec.observe, lim
		c.TraceStore = tracestore.NewMemory(tracestore.MemoryConfig{})
	})
	ev := testevent.Valid("order-1", "SF1")

	require.NoError(t, h.Handle(msgOf(t, ev)))
	assert.Equal(t, []Observation{
		{Kind: ObservedTraceStore, AppID: "wxapp1", Detail: "claim_won"},
		{Kind: ObservedQuota, AppID: "wxapp1", Remaining: 9},
		{Kind: ObservedTraced, AppID: "wxapp1", Detail: "call"},
	}, rec.take())

	require.NoError(t, h.Handle(msgOf(t, ev)), "a duplicate")
	assert.Equal(t, []Observation{
		{Kind: ObservedTraceStore, AppID: "wxapp1", Detail: "hit"},
		{Kind: ObservedTraced, AppID: "wxapp1", Detail: "store"},
	}, rec.take())

	tr.On("SF2", wechatErr(-1), wechatErr(47001))
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-2", "SF2"))))
	assert.Equal(t, []Observation{
		{Kind: ObservedTraceStore, AppID: "wxapp1", Detail: "claim_won"},
		{Kind: ObservedQuota, AppID: "wxapp1", Remaining: 8},
		{Kind: ObservedRetried, AppID: "wxapp1", Detail: "transient"},
		{Kind: ObservedQuota, AppID: "wxapp1", Remaining: 7}, // WeChat counted the busy answer
		{Kind: ObservedDeadLettered, AppID: "wxapp1", Detail: "permanent"},
	}, rec.take())

	require.NoError(t, h.Handle(msgOf(t, map[string]any{"version": 1})))
	assert.Equal(t, []Observation{{Kind: ObservedDeadLettered, Detail: "invalid_event"}}, rec.take(), "no appid before it decodes")
	assert.Equal(t, "trace_store", ObservedTraceStore.String())
}
