package metrics

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/wechat"
)

func TestObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(Config{Registerer: reg})
	require.NoError(t, err)
	for _, o := range []waybill.Observation{
		{Kind: waybill.ObservedTraced, AppID: "wx1", Detail: "call"},
		{Kind: waybill.ObservedTraced, AppID: "wx1", Detail: "call"},
		{Kind: waybill.ObservedTraced, AppID: "wx1", Detail: "store"},
		{Kind: waybill.ObservedDeadLettered, Detail: "invalid_event"},
		{Kind: waybill.ObservedParked, AppID: "wx2", Detail: "in.delay.1h0m0s"},
		{Kind: waybill.ObservedQuota, AppID: "wx2", Remaining: 41},
		{Kind: waybill.ObservedBreaker, AppID: "wx2", Detail: "open"},
		{Kind: waybill.ObservedBreaker, AppID: "wx2 update_waybill_goods", Detail: "half-open"},
		{Kind: waybill.ObservedTraceStore, AppID: "wx1", Detail: "hit"},
	} {
		m.Observe(o)
	}
	m.ObserveCall(wechat.CallInfo{Endpoint: "trace_waybill", AppID: "wx1", Duration: 30 * time.Millisecond, Errcode: 931023, Class: wechat.ClassNotYet})
	m.ObserveCall(wechat.CallInfo{Endpoint: "trace_waybill", AppID: "wx1", Duration: 2 * time.Second})

	assert.Equal(t, 2.0, testutil.ToFloat64(m.traced.WithLabelValues("wx1", "call")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.traced.WithLabelValues("wx1", "store")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.dead.WithLabelValues("none", "invalid_event")), "an event without appid")
	assert.Equal(t, 41.0, testutil.ToFloat64(m.quota.WithLabelValues("wx2")))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.breaker.WithLabelValues("wx2")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.breaker.WithLabelValues("wx2 update_waybill_goods")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.calls.WithLabelValues("trace_waybill", "931023", "not_yet")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.calls.WithLabelValues("trace_waybill", "0", "none")))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP waybill_wechat_call_duration_seconds Latency of HTTP requests to WeChat.
# TYPE waybill_wechat_call_duration_seconds histogram
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.01"} 0
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.025"} 0
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.05"} 1
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.1"} 1
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.25"} 1
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="0.5"} 1
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="1"} 1
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="2.5"} 2
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="5"} 2
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="10"} 2
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="30"} 2
waybill_wechat_call_duration_seconds_bucket{endpoint="trace_waybill",le="+Inf"} 2
waybill_wechat_call_duration_seconds_sum{endpoint="trace_waybill"} 2.03
waybill_wechat_call_duration_seconds_count{endpoint="trace_waybill"} 2
`), "waybill_wechat_call_duration_seconds"))
}

// TestFoldAppIDs: past MaxAppIDs, new appids are counted as "other";
// negative folds them all.
func TestFoldAppIDs(t *testing.T) {
	m, err := New(Config{Registerer: prometheus.NewRegistry(), MaxAppIDs: 2})
	require.NoError(t, err)
	for _, appid := range []string{"wx1", "wx2", "wx3", "wx4", "wx1"} {
		m.Observe(waybill.Observation{Kind: waybill.ObservedTraced, AppID: appid, Detail: "call"})
	}
	assert.Equal(t, 2.0, testutil.ToFloat64(m.traced.WithLabelValues("wx1", "call")))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.traced.WithLabelValues("other", "call")))
	assert.Equal(t, 3, testutil.CollectAndCount(m.traced))

	all, err := New(Config{Registerer: prometheus.NewRegistry(), MaxAppIDs: -1})
	require.NoError(t, err)
	all.Observe(waybill.Observation{Kind: waybill.ObservedTraced, AppID: "wx1", Detail: "call"})
	all.Observe(waybill.Observation{Kind: waybill.ObservedBreaker, AppID: "wx1 update_waybill_goods", Detail: "open"})
	assert.Equal(t, 1.0, testutil.ToFloat64(all.traced.WithLabelValues("all", "call")))
	assert.Equal(t, 2.0, testutil.ToFloat64(all.breaker.WithLabelValues("all update_waybill_goods")))
}

func TestLag(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(Config{Registerer: reg})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, m.Lag(ctx, func(context.Context) ([]PartitionLag, error) {
		return []PartitionLag{{Group: "g", Topic: "in", Partition: 3, Lag: 17}}, nil
	}))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP waybill_consumer_lag Records between a consumer group's committed offset and the partition's high watermark.
# TYPE waybill_consumer_lag gauge
waybill_consumer_lag{group="g",partition="3",topic="in"} 17
# HELP waybill_consumer_lag_up 1 when the last read of the consumer lag succeeded.
# TYPE waybill_consumer_lag_up gauge
waybill_consumer_lag_up 1
`), "waybill_consumer_lag", "waybill_consumer_lag_up"))
}

// TestLagHungRead: a read that never answers makes the lag unknown
// (up 0) once it overruns LagTimeout, a scrape never waits for it, and no
// second read starts while it hangs. Under synctest's clock.
func TestLagHungRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m, err := New(Config{Registerer: reg})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		release := make(chan struct{})
		var reads atomic.Int32
		go func() {
			_ = m.Lag(ctx, func(context.Context) ([]PartitionLag, error) {
				reads.Add(1)
				<-release // ignores its context, as sarama does
				return nil, nil
			})
		}()
		time.Sleep(LagTimeout + time.Second)
		synctest.Wait()
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP waybill_consumer_lag_up 1 when the last read of the consumer lag succeeded.
# TYPE waybill_consumer_lag_up gauge
waybill_consumer_lag_up 0
`), "waybill_consumer_lag", "waybill_consumer_lag_up"))
		time.Sleep(5 * LagEvery)
		synctest.Wait()
		assert.Equal(t, int32(1), reads.Load(), "no read piles up behind a hung one")
		close(release)
		time.Sleep(LagEvery)
		synctest.Wait()
		assert.Equal(t, int32(2), reads.Load(), "reads resume")
		cancel()
	})
}

// TestDeclare: declared appids start at zero; with OnlyDeclared, others
// are "unknown"; a value that cannot be an appid is "invalid".
func TestDeclare(t *testing.T) {
	m, err := New(Config{Registerer: prometheus.NewRegistry(), OnlyDeclared: true})
	require.NoError(t, err)
	m.Declare("wx1")
	_, err = m.dead.GetMetricWithLabelValues("wx1", "configuration")
	require.NoError(t, err)
	assert.Equal(t, 0.0, testutil.ToFloat64(m.dead.WithLabelValues("wx1", "configuration")))
	assert.Equal(t, 0.0, testutil.ToFloat64(m.dead.WithLabelValues("unknown", "configuration")))
	before := testutil.CollectAndCount(m.dead)
	assert.Equal(t, 3*5, before, "wx1, none and unknown, each reason")
	for _, appid := range []string{"wx2", "wx\xff", strings.Repeat("x", 100)} {
		m.Observe(waybill.Observation{Kind: waybill.ObservedDeadLettered, AppID: appid, Detail: "configuration"})
	}
	assert.Equal(t, 1.0, testutil.ToFloat64(m.dead.WithLabelValues("unknown", "configuration")))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.dead.WithLabelValues("invalid", "configuration")), "no panic on invalid UTF-8")
	m.Observe(waybill.Observation{Kind: waybill.ObservedDeadLettered, AppID: "wx1", Detail: "configuration"})
	assert.Equal(t, 1.0, testutil.ToFloat64(m.dead.WithLabelValues("wx1", "configuration")))
}
