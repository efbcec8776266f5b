package waybill_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/demo"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/ratelimit"
	limitredis "github.com/waybillkit/waybill/ratelimit/redis"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationMerchantsDoNotStallEachOther runs a service provider's mixed
// topic on a real Kafka 4.x broker (scripts/kafka.sh) with the quota shared
// through a real Redis (scripts/redis.sh): one appid has spent its daily
// quota, one appid's WeChat is failing (its breaker opens), one buyer is past
// their daily calls. The healthy merchants' events are traced while the
// others are parked; the failing merchant's events are traced once WeChat
// recovers, and the quota-bound ones after the daily reset (a controllable
// clock jumps past 00:00 Asia/Shanghai). Nothing is lost and no transient
// fault or quota answer is dead-lettered.
func TestIntegrationMerchantsDoNotStallEachOther(t *testing.T) {
	brokers := testkafka.Brokers(t)
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)

	in, traced, dead := testkafka.Topic(t, "shipped"), testkafka.Topic(t, "traced"), testkafka.Topic(t, "dead")
	parking := &waybill.ParkingConfig{Tiers: []time.Duration{300 * time.Millisecond, 2 * time.Second}, TopicPrefix: in + ".delay."}
	for _, topic := range append([]string{in, traced, dead}, parking.Topics(in)...) {
		testkafka.CreateTopic(t, brokers, topic, 3)
	}

	const (
		healthyA = "wx1111111111111111"
		healthyB = "wx2222222222222222"
		spent    = "wx3333333333333333" // daily quota of 3
		failing  = "wx4444444444444444" // WeChat answers 503
		greedy   = "o-greedy-buyer"     // under healthyB, past 2 calls a day
	)
	sandbox := wechattest.NewServer(wechattest.Config{AutoRegister: true})
	defer sandbox.Close()
	outage := sandbox.Inject(wechattest.Fault{
		Endpoint: "trace_waybill", HTTPStatus: 503,
		Match: func(c *wechattest.Call) bool { return c.AppID == failing },
	})
	secrets := wechat.StaticSecrets{healthyA: "a", healthyB: "b", spent: "c", failing: "d"}
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: sandbox.URL, Secrets: secrets})
	require.NoError(t, err)
	client, err := wechat.NewClient(wechat.Config{BaseURL: sandbox.URL, Tokens: tokens})
	require.NoError(t, err)

	// The clock runs with real time plus an offset the test can jump.
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	limiter, err := ratelimit.New(ratelimit.Config{
		Store:    limitredis.NewStore(rdb, prefix),
		Defaults: ratelimit.Limits{UserDaily: 2, Rate: -1},
		Apps:     map[string]ratelimit.Limits{spent: {AppDaily: 3}},
	})
	require.NoError(t, err)

	var cases []demo.Case
	group := map[string]string{} // order id → which kind
	add := func(kind, appid, openid string, n int) {
		for i := range n {
			id := fmt.Sprintf("%s-%02d", kind, i)
			ev := event.OrderShipped{
				Version: 1, OrderID: id, AppID: appid, OpenID: openid, WaybillID: "SF" + id, DeliveryID: "SF",
				ReceiverPhone: "13800138000", Goods: []event.Goods{{Name: "龙井 明前茶", ImageURL: "https://img.example.cn/tea.jpg"}},
			}
			if openid == "" {
				ev.OpenID = "o-" + id // a buyer of their own
			}
			b, err := json.Marshal(ev)
			require.NoError(t, err)
			cases = append(cases, demo.Case{OrderID: id, Payload: b, Want: "traced"})
			group[id] = kind
		}
	}
	add("healthyA", healthyA, "", 10)
	add("healthyB", healthyB, "", 10)
	add("spent", spent, "", 6)
	add("failing", failing, "", 5)
	add("greedy", healthyB, greedy, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := demo.Start(ctx, demo.Config{
		Kafka:      kafka.Config{Brokers: brokers, ConsumerGroup: in + "-group"},
		Client:     client,
		InputTopic: in, TracedTopic: traced, DeadLetterTopic: dead,
		Recheck: 100 * time.Millisecond,
		Customize: func(c *waybill.Config) {
			c.Limiter = limiter
			c.Parking = parking
			c.Now = now
			c.Breaker = waybill.BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: 500 * time.Millisecond}
			c.Retry.BreakerWait = 300 * time.Millisecond
			c.Backoff = func(int) time.Duration { return 20 * time.Millisecond }
		},
	})
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Publish(cases))

	count := func(out map[string]demo.Outcome, kind string) (n int) {
		for id, o := range out {
			if (kind == "" || group[id] == kind) && o.Result == "traced" {
				n++
			}
		}
		return n
	}
	noDead := func(t *testing.T, out map[string]demo.Outcome) {
		for id, o := range out {
			assert.Equal(t, "traced", o.Result, "order %s must not be dead-lettered", id)
		}
	}

	// Phase 1: the healthy merchants flow while the others wait.
	require.NoError(t, p.WaitFor(ctx, func(out map[string]demo.Outcome) bool {
		return count(out, "healthyA") == 10 && count(out, "healthyB") == 10 && count(out, "spent") == 3 && count(out, "greedy") == 2
	}), "healthy merchants must be traced while one merchant is failing")
	out := p.Outcomes()
	noDead(t, out)
	assert.Zero(t, count(out, "failing"), "WeChat is still failing for this appid")
	var waiting []string
	for _, c := range cases {
		if _, ok := out[c.OrderID]; !ok {
			waiting = append(waiting, group[c.OrderID])
		}
	}
	sort.Strings(waiting)
	// in = traced + dead-lettered + parked: 35 = 25 + 0 + 10.
	assert.Equal(t, len(cases), len(out)+len(waiting))
	assert.Equal(t, []string{"failing", "failing", "failing", "failing", "failing", "greedy", "greedy", "spent", "spent", "spent"}, waiting)
	assert.Positive(t, p.Handler().Stats().Parked)

	// Phase 2: WeChat recovers; the breaker's probe succeeds and the
	// failing merchant's parked events come back traced.
	outage()
	require.NoError(t, p.WaitFor(ctx, func(out map[string]demo.Outcome) bool { return count(out, "failing") == 5 }))

	// Phase 3: the day turns in Shanghai; quota-bound events are traced.
	assert.Equal(t, 30, count(p.Outcomes(), ""), "quota-bound events still wait for the window")
	offset.Store(int64(24 * time.Hour))
	require.NoError(t, p.WaitFor(ctx, func(out map[string]demo.Outcome) bool { return count(out, "") == len(cases) }))
	noDead(t, p.Outcomes())

	// No quota was wasted: every healthy waybill was traced with one call,
	// and no denied event reached WeChat.
	calls := map[string]int{}
	for _, c := range sandbox.CallsTo("trace_waybill") {
		if c.AppID != failing {
			calls[c.Field("waybill_id")]++
		}
	}
	assert.Len(t, calls, len(cases)-5)
	for w, n := range calls {
		assert.Equal(t, 1, n, "waybill %s", w)
	}
}
