package waybill

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// boundsRig is a handler on a real broker against the sandbox, with an
// observer of its outputs and of how long each delivery held its partition.
type boundsRig struct {
	brokers             []string
	in, traced, dead    string
	sandbox             *wechattest.Server
	client              *wechat.Client
	mu                  sync.Mutex
	tracedAt            map[string]time.Time // order id → first waybill.traced seen
	deadReasons         map[string]deadletter.Reason
	longestHold         time.Duration
	deliveries, nacks   int
	errs                []string // the first few reasons a delivery was left for redelivery
	partitions          int32
	parking             *ParkingConfig
	handlerCfg          Config
	routerDone, runDone chan struct{}
}

func newBoundsRig(t *testing.T, partitions int32, parking *ParkingConfig) *boundsRig {
	r := &boundsRig{
		brokers: testkafka.Brokers(t), partitions: partitions, parking: parking,
		in: testkafka.Topic(t, "shipped"), traced: testkafka.Topic(t, "traced"), dead: testkafka.Topic(t, "dead"),
		tracedAt: map[string]time.Time{}, deadReasons: map[string]deadletter.Reason{},
	}
	topics := []string{r.in, r.traced, r.dead}
	if parking != nil {
		parking.TopicPrefix = r.in + ".delay."
		topics = append(topics, parking.Topics(r.in)...)
	}
	for _, topic := range topics {
		testkafka.CreateTopic(t, r.brokers, topic, partitions)
	}
	r.sandbox = wechattest.NewServer(wechattest.Config{AutoRegister: true})
	t.Cleanup(r.sandbox.Close)
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: r.sandbox.URL, Secrets: wechat.StaticSecrets{"wx5555555555555555": "s"}})
	require.NoError(t, err)
	r.client, err = wechat.NewClient(wechat.Config{BaseURL: r.sandbox.URL, Tokens: tokens})
	require.NoError(t, err)
	return r
}

// run starts the handler (and with parking a DelayRunner) until ctx ends.
func (r *boundsRig) run(ctx context.Context, t *testing.T, mod func(*Config)) {
	kc := kafka.Config{Brokers: r.brokers, ConsumerGroup: r.in + "-group"}
	pub, err := kafka.NewPublisher(kc, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	sub, err := kafka.NewSubscriber(kc, nil)
	require.NoError(t, err)
	cfg := Config{Client: r.client, Publisher: pub, Position: kafka.Position, InputTopic: r.in, TracedTopic: r.traced, DeadLetterTopic: r.dead, Parking: r.parking}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddConsumerHandler("bounds", r.in, sub, func(msg *message.Message) error {
		start := time.Now()
		err := h.Handle(msg)
		held := time.Since(start)
		r.mu.Lock()
		r.deliveries++
		if err != nil {
			r.nacks++
			if r.nacks <= 12 {
				r.errs = append(r.errs, fmt.Sprintf("%s after %s", err, held.Round(time.Millisecond)))
			}
		}
		r.longestHold = max(r.longestHold, held)
		r.mu.Unlock()
		return err
	})
	r.routerDone = make(chan struct{})
	go func() { defer close(r.routerDone); _ = router.Run(ctx) }()
	if r.parking != nil {
		runner, err := kafka.NewDelayRunner(kafka.DelayRunnerConfig{
			Kafka: kafka.Config{Brokers: r.brokers, ConsumerGroup: r.in + "-delay"}, Topics: r.parking.Topics(r.in),
			Publisher: pub, InputTopic: r.in, DeadLetterTopic: r.dead, Recheck: time.Second,
		})
		require.NoError(t, err)
		r.runDone = make(chan struct{})
		go func() { defer close(r.runDone); _ = runner.Run(ctx) }()
	}
	<-router.Running()
	r.observe(ctx, t)
}

func (r *boundsRig) observe(ctx context.Context, t *testing.T) {
	sub, err := kafka.NewSubscriber(kafka.Config{Brokers: r.brokers, ConsumerGroup: r.in + "-observer"}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	tracedCh, err := sub.Subscribe(ctx, r.traced)
	require.NoError(t, err)
	deadCh, err := sub.Subscribe(ctx, r.dead)
	require.NoError(t, err)
	go func() {
		for {
			select {
			case m, ok := <-tracedCh:
				if !ok {
					return
				}
				id := m.Metadata.Get(deadletter.HeaderKey)
				r.mu.Lock()
				if _, seen := r.tracedAt[id]; !seen {
					r.tracedAt[id] = time.Now()
				}
				r.mu.Unlock()
				m.Ack()
			case m, ok := <-deadCh:
				if !ok {
					return
				}
				dl, err := deadletter.Parse(m)
				r.mu.Lock()
				if err == nil {
					r.deadReasons[m.Metadata.Get(deadletter.HeaderDeadKey)] = dl.Reason
				}
				r.mu.Unlock()
				m.Ack()
			}
		}
	}()
}

// waitFor polls cond under the rig's lock until it holds or ctx ends.
func (r *boundsRig) waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for {
		r.mu.Lock()
		ok := cond()
		traced, dead := len(r.tracedAt), len(r.deadReasons)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached (%d traced, %d dead-lettered)", what, traced, dead)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func boundsEvents(prefix string, normal, unknown int) (events []event.OrderShipped, order []int) {
	every := normal + 1
	if unknown > 0 {
		every = (normal + unknown) / unknown
	}
	for i := range normal + unknown {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		waybillID := "SF" + id
		if unknown > 0 && i%every == every/2 {
			waybillID = "UNKNOWN-" + id
			unknown--
		}
		events = append(events, event.OrderShipped{
			Version: 1, OrderID: id, AppID: "wx5555555555555555", OpenID: fmt.Sprintf("o-buyer-%d", i%40), WaybillID: waybillID, DeliveryID: "SF",
			ReceiverPhone: "13800138000", Goods: []event.Goods{{Name: "龙井 明前茶", ImageURL: "https://img.example.cn/tea.jpg"}},
		})
		order = append(order, i)
	}
	return events, order
}

// TestIntegrationNotYetIsBounded: 20 waybills WeChat does not know yet
// (931023) among 200 normal ones, on a real broker. WeChat sees at most
// NotYetAttempts calls per unknown waybill, never two within NotYetDelay,
// and each ends dead-lettered not_yet_exhausted; nothing else is
// dead-lettered. With parking (the service's default) the normal ones are
// traced while the unknown ones wait; without it (the library's default)
// they are traced too, each unknown waybill holding its partition for at
// most MaxWaitInPlace per delivery. The delays are shortened by config;
// their ratio is production's: NotYetDelay exceeds MaxWaitInPlace, so the
// waits span redeliveries.
func TestIntegrationNotYetIsBounded(t *testing.T) {
	const (
		normal, unknown = 200, 20
		attempts        = 3
		notYetDelay     = 4 * time.Second
		budget          = 2 * time.Second
	)
	for _, tc := range []struct {
		name    string
		parking *ParkingConfig
	}{
		{"parking (the service's default)", &ParkingConfig{Tiers: []time.Duration{time.Second, 3 * time.Second}}},
		{"no parking (the library's default)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newBoundsRig(t, 6, tc.parking)
			r.sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023,
				Match: func(c *wechattest.Call) bool { return strings.HasPrefix(c.Field("waybill_id"), "UNKNOWN-") }})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			events, order := boundsEvents("ny", normal, unknown)
			start := time.Now()
			publishEvents(t, r.brokers, r.in, events, order)
			r.run(ctx, t, func(c *Config) {
				c.Retry.NotYetDelay, c.Retry.NotYetAttempts = notYetDelay, attempts
				c.MaxWaitInPlace = budget
			})
			r.waitFor(ctx, t, "every event accounted for", func() bool { return len(r.tracedAt) == normal && len(r.deadReasons) == unknown })

			calls := map[string][]time.Time{}
			for _, c := range r.sandbox.CallsTo("trace_waybill") {
				calls[c.Field("waybill_id")] = append(calls[c.Field("waybill_id")], c.At)
			}
			var firstRetry, lastNormalCall time.Time
			for _, ev := range events {
				times := calls[ev.WaybillID]
				if !strings.HasPrefix(ev.WaybillID, "UNKNOWN-") {
					assert.Len(t, times, 1, "normal waybill %s", ev.WaybillID)
					if len(times) > 0 && times[0].After(lastNormalCall) {
						lastNormalCall = times[0]
					}
					continue
				}
				assert.Equal(t, deadletter.ReasonNotYetExhausted, r.deadReasons[ev.OrderID], "order %s", ev.OrderID)
				assert.LessOrEqual(t, len(times), attempts, "calls for %s", ev.WaybillID)
				for i := 1; i < len(times); i++ {
					assert.GreaterOrEqual(t, times[i].Sub(times[i-1]), notYetDelay, "calls %d and %d for %s", i, i+1, ev.WaybillID)
				}
				if len(times) > 1 && (firstRetry.IsZero() || times[1].Before(firstRetry)) {
					firstRetry = times[1]
				}
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			var lastNormal time.Time
			for _, at := range r.tracedAt {
				if at.After(lastNormal) {
					lastNormal = at
				}
			}
			t.Logf("%d deliveries, %d left for redelivery, longest hold %s; normal events traced within %s", r.deliveries, r.nacks, r.longestHold.Round(time.Millisecond), lastNormal.Sub(start).Round(time.Millisecond))
			assert.LessOrEqual(t, r.longestHold, budget+2*time.Second, "a delivery held its partition past MaxWaitInPlace (plus publishing)")
			if tc.parking != nil {
				// WeChat's own clock: every normal waybill was called before
				// any unknown one was called a second time.
				require.False(t, firstRetry.IsZero())
				assert.True(t, lastNormalCall.Before(firstRetry), "normal events waited behind unknown ones: last normal call %s, first 931023 retry %s", lastNormalCall, firstRetry)
			}
		})
	}
}

// TestIntegrationSlowWeChatNeverHoldsAPartition: WeChat (the sandbox with
// latency faults) holds a third of the calls longer than the budget. No
// delivery holds its partition longer than MaxWaitInPlace, nothing is
// dead-lettered, and every event is traced afterwards.
func TestIntegrationSlowWeChatNeverHoldsAPartition(t *testing.T) {
	const (
		n      = 30
		budget = 3 * time.Second
	)
	r := newBoundsRig(t, 3, nil)
	r.sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: 2 * budget, Rate: 0.3})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	events, order := boundsEvents("slow", n, 0)
	publishEvents(t, r.brokers, r.in, events, order)
	r.run(ctx, t, func(c *Config) { c.MaxWaitInPlace = budget })
	r.waitFor(ctx, t, "every event traced", func() bool { return len(r.tracedAt) == n })

	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("%d deliveries, %d left for redelivery, longest hold %s; first reasons:\n%s", r.deliveries, r.nacks, r.longestHold.Round(time.Millisecond), strings.Join(r.errs, "\n"))
	slow := 0
	for _, c := range r.sandbox.CallsTo("trace_waybill") {
		if c.Fault {
			slow++
		}
	}
	t.Logf("WeChat held %d of %d trace_waybill calls", slow, len(r.sandbox.CallsTo("trace_waybill")))
	assert.Empty(t, r.deadReasons)
	assert.Positive(t, r.nacks, "no call was slow: the test tested nothing")
	assert.LessOrEqual(t, r.longestHold, budget+2*time.Second, "a delivery held its partition past MaxWaitInPlace (plus publishing)")
}
