package waybill_test

import (
	"context"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/demo"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/replay"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestReplayIntegrationFixedCauseComesBackTraced runs the operator's story
// on a real Kafka 4.x broker (scripts/kafka.sh): WeChat refuses some events
// with 48001 (a permission the merchants lack), the handler dead-letters
// them; the permission is granted ("fix the cause" in the sandbox); a replay
// selects one merchant's 48001 events; the handler runs again. Exactly the
// selected events come back traced; the rest stay in the dead-letter topic
// and WeChat never hears of them again.
func TestReplayIntegrationFixedCauseComesBackTraced(t *testing.T) {
	brokers := testkafka.Brokers(t)
	in, traced, dead := testkafka.Topic(t, "shipped"), testkafka.Topic(t, "traced"), testkafka.Topic(t, "dead")
	for _, topic := range []string{in, traced, dead} {
		testkafka.CreateTopic(t, brokers, topic, 3)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	sandbox, err := demo.NewSandbox()
	require.NoError(t, err)
	defer sandbox.Close()
	client := sandbox.Client

	// Twelve events: demo.Cases makes #11 invalid and #12 a buyer WeChat
	// rejects (40003); of the rest, every third lacks the plugin permission
	// (48001), for both merchants.
	cases := demo.Cases("RP", 12)
	events := map[string]event.OrderShipped{}
	blocked := map[string]bool{} // waybill ids
	for i := range cases {
		var ev event.OrderShipped
		require.NoError(t, json.Unmarshal(cases[i].Payload, &ev))
		events[ev.OrderID] = ev
		if cases[i].Want == "traced" && i%3 == 0 {
			blocked[ev.WaybillID] = true
			cases[i].Want = string(deadletter.ReasonConfiguration)
		}
	}
	unblock := sandbox.Inject(wechattest.Fault{
		Endpoint: "trace_waybill",
		Match:    func(c *wechattest.Call) bool { return blocked[c.Field("waybill_id")] },
		Errcode:  48001,
	})

	kcfg := kafka.Config{Brokers: brokers, ConsumerGroup: in + "-group"}
	sum, err := demo.Run(ctx, demo.Config{Kafka: kcfg, Client: client, InputTopic: in, TracedTopic: traced, DeadLetterTopic: dead}, cases)
	require.NoError(t, err)
	require.Empty(t, sum.Mismatches(cases), "first run")
	var tracedFirst, configTea, configSport, stay []string
	for _, c := range cases {
		switch {
		case c.Want == "traced":
			tracedFirst = append(tracedFirst, c.OrderID)
		case c.Want == string(deadletter.ReasonConfiguration) && events[c.OrderID].AppID == demo.SportShop:
			configSport = append(configSport, c.OrderID)
		case c.Want == string(deadletter.ReasonConfiguration):
			configTea = append(configTea, c.OrderID)
			stay = append(stay, c.OrderID)
		default:
			stay = append(stay, c.OrderID)
		}
	}
	require.Len(t, configSport, 2)
	require.Len(t, configTea, 2)
	deadBefore := testkafka.ReadTopic(t, brokers, dead)
	require.Len(t, deadBefore, 6)

	// The handler that runs after the replay is a consumer group positioned
	// at the input's current end. (The first run's group may not have
	// committed its last records before it stopped: at-least-once would
	// redeliver them, which is the handler's business, not the replay's.)
	after := kafka.Config{Brokers: brokers, ConsumerGroup: in + "-after-replay"}
	positionAtEnd(t, brokers, after.ConsumerGroup, in)

	// The merchants get the permission.
	unblock()
	callsBefore := len(sandbox.CallsTo("trace_waybill"))

	cfg := replay.Config{
		Kafka:  kafka.Config{Brokers: brokers},
		Topic:  dead,
		Filter: replay.Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}, Errcodes: []int{48001}, AppIDs: []string{demo.SportShop}},
		DryRun: true,
	}
	var wouldMove []string
	cfg.Progress = func(p replay.Progress) {
		if p.Event.Outcome == replay.WouldReplay {
			wouldMove = append(wouldMove, p.Event.OrderID)
		}
	}
	dry, err := replay.Run(ctx, cfg)
	require.NoError(t, err)
	sort.Strings(wouldMove)
	assert.Equal(t, configSport, wouldMove, "the dry run names the selected events")
	assert.Equal(t, replay.Counts{Scanned: 6, Replayed: 2, SkippedByFilter: 4}, dry.Counts)
	assert.Len(t, testkafka.ReadTopic(t, brokers, in), len(cases), "the dry run moved nothing")

	cfg.DryRun, cfg.Progress = false, nil
	rep, err := replay.Run(ctx, cfg)
	require.NoError(t, err)
	assert.Equal(t, replay.Counts{Scanned: 6, Replayed: 2, SkippedByFilter: 4}, rep.Counts)
	assert.Equal(t, replay.Counts{Scanned: 4, Replayed: 2, SkippedByFilter: 2}, rep.ByReason[deadletter.ReasonConfiguration])

	// The replayed events are back on the input topic as they were, counted.
	input := testkafka.ReadTopic(t, brokers, in)
	require.Len(t, input, len(cases)+2)
	replayedIDs := map[string]string{} // order id → replays header
	for _, m := range input {
		if v, ok := testkafka.Header(m, deadletter.HeaderReplays); ok {
			replayedIDs[string(m.Key)] = v
		}
	}
	assert.Equal(t, map[string]string{configSport[0]: "1", configSport[1]: "1"}, replayedIDs)

	// The handler runs again.
	runHandlerUntilIdle(ctx, t, after, client, in, traced, dead)

	assert.Equal(t, sortedCopy(append(tracedFirst, configSport...)), tracedOrders(t, brokers, traced),
		"exactly the selected events came back traced")
	for _, id := range configSport {
		ev := events[id]
		wb, ok := sandbox.Waybill(ev.AppID, ev.WaybillID)
		require.True(t, ok, "WeChat knows the waybill of %s now", id)
		assert.Equal(t, ev.OpenID, wb.OpenID)
	}
	var calledAfter []string
	for _, c := range sandbox.CallsTo("trace_waybill")[callsBefore:] {
		calledAfter = append(calledAfter, c.Field("waybill_id"))
	}
	sort.Strings(calledAfter)
	assert.Equal(t, sortedCopy([]string{events[configSport[0]].WaybillID, events[configSport[1]].WaybillID}), calledAfter,
		"WeChat was called for the selected events only, once each")

	deadAfter := testkafka.ReadTopic(t, brokers, dead)
	assert.Len(t, deadAfter, len(deadBefore), "nothing was dead-lettered again")
	var deadOrders []string
	for _, m := range deadAfter {
		deadOrders = append(deadOrders, string(m.Key))
	}
	sort.Strings(deadOrders)
	assert.Equal(t, sortedCopy(append(stay, configSport...)), deadOrders, "the rest stay in the dead-letter topic")
	for _, id := range stay {
		_, ok := sandbox.Waybill(events[id].AppID, events[id].WaybillID)
		assert.False(t, ok, "%s was not replayed, so not traced", id)
	}

	// The same replay again has nothing left to do.
	again, err := replay.Run(ctx, cfg)
	require.NoError(t, err)
	assert.Equal(t, replay.Counts{}, again.Counts)
}

// positionAtEnd commits the end offsets of topic for group, which has no
// members: a handler in that group consumes only what is published later.
func positionAtEnd(t *testing.T, brokers []string, group, topic string) {
	t.Helper()
	client, err := sarama.NewClient(brokers, testkafka.Config())
	require.NoError(t, err)
	defer client.Close()
	parts, err := client.Partitions(topic)
	require.NoError(t, err)
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	require.NoError(t, err)
	want := map[int32]int64{}
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		pom, err := om.ManagePartition(topic, p)
		require.NoError(t, err)
		pom.MarkOffset(end, "")
		want[p] = end
	}
	om.Commit()
	require.NoError(t, om.Close())

	admin, err := sarama.NewClusterAdminFromClient(client)
	require.NoError(t, err)
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	require.NoError(t, err)
	for p, end := range want {
		require.Equal(t, end, resp.GetBlock(topic, p).Offset, "committed position of %s/%d", topic, p)
	}
}

// runHandlerUntilIdle runs the handler on a Watermill router until its
// consumer group has committed every record of the input topic.
func runHandlerUntilIdle(ctx context.Context, t *testing.T, kcfg kafka.Config, client waybill.Tracer, in, traced, dead string) {
	t.Helper()
	logger := watermill.NopLogger{}
	pub, err := kafka.NewPublisher(kcfg, logger)
	require.NoError(t, err)
	defer pub.Close()
	sub, err := kafka.NewSubscriber(kcfg, logger)
	require.NoError(t, err)
	defer sub.Close()
	h, err := waybill.NewHandler(waybill.Config{Client: client, Publisher: pub, Position: kafka.Position, InputTopic: in, TracedTopic: traced, DeadLetterTopic: dead})
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	h.AddTo(router, sub)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- router.Run(runCtx) }()
	defer func() {
		stop()
		assert.NoError(t, <-done)
	}()

	admin, err := sarama.NewClusterAdmin(kcfg.Brokers, testkafka.Config())
	require.NoError(t, err)
	defer admin.Close()
	cl, err := sarama.NewClient(kcfg.Brokers, testkafka.Config())
	require.NoError(t, err)
	defer cl.Close()
	parts, err := cl.Partitions(in)
	require.NoError(t, err)
	lag := func() (int64, error) {
		resp, err := admin.ListConsumerGroupOffsets(kcfg.ConsumerGroup, map[string][]int32{in: parts})
		if err != nil {
			return 0, err
		}
		var n int64
		for _, p := range parts {
			end, err := cl.GetOffset(in, p, sarama.OffsetNewest)
			if err != nil {
				return 0, err
			}
			b := resp.GetBlock(in, p)
			if b == nil || b.Offset < 0 {
				n += end
			} else {
				n += end - b.Offset
			}
		}
		return n, nil
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := lag()
		require.NoError(t, err)
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the handler did not catch up on %s: %d records left: %v", in, n, ctx.Err())
		case <-tick.C:
		}
	}
}

// tracedOrders returns the distinct order ids on the traced topic, sorted.
func tracedOrders(t *testing.T, brokers []string, topic string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, m := range testkafka.ReadTopic(t, brokers, topic) {
		var out event.WaybillTraced
		require.NoError(t, json.Unmarshal(m.Value, &out))
		require.NotEmpty(t, out.WaybillToken, "order %s", out.OrderID)
		seen[out.OrderID] = true
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	return sortedCopy(ids)
}

func sortedCopy(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return out
}
