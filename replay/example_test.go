package replay_test

import (
	"context"
	"fmt"
	"log"
	"sort"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/replay"
)

// Two events were dead-lettered: WeChat refused one because the merchant had
// not enabled the logistics plugin (48001), the other because it did not know
// the buyer (40003). The merchant has enabled the plugin; a dry run shows
// what a replay of the 48001 events would move, then the replay moves it.
func ExampleRun() {
	// An in-process Kafka stands in for the cluster.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, event.OrderShippedTopic, deadletter.DefaultTopic))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	writeDeadLetter(brokers, "A1001", deadletter.ReasonConfiguration, "48001")
	writeDeadLetter(brokers, "A1002", deadletter.ReasonPermanent, "40003")

	cfg := replay.Config{
		Kafka:  kafka.Config{Brokers: brokers},
		Filter: replay.Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}, Errcodes: []int{48001}},
		DryRun: true,
		Progress: func(p replay.Progress) {
			fmt.Printf("%s: order %s (%s)\n", p.Event.Outcome, p.Event.OrderID, p.Event.Dead.Reason)
		},
	}
	ctx := context.Background()
	if _, err := replay.Run(ctx, cfg); err != nil {
		log.Fatal(err)
	}

	cfg.DryRun, cfg.Progress = false, nil
	rep, err := replay.Run(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("scanned %d, replayed %d, skipped by filter %d\n", rep.Scanned, rep.Replayed, rep.SkippedByFilter)

	// The event is back on order.shipped as it was, with its replay counter.
	back := firstRecord(brokers, event.OrderShippedTopic)
	fmt.Printf("%s: key %s, %s\n", event.OrderShippedTopic, back.Key, recordHeaders(back))
	// Output:
	// would_replay: order A1001 (configuration)
	// skipped_by_filter: order A1002 (permanent)
	// scanned 2, replayed 1, skipped by filter 1
	// order.shipped: key A1001, [_watermill_message_uuid=uuid-A1001 trace_id=t-A1001 waybill_key=A1001 waybill_replays=1]
}

// writeDeadLetter writes a dead letter as the handler does: the original payload
// and headers, the deadletter.HeaderDead* headers added, keyed by order id.
func writeDeadLetter(brokers []string, orderID string, reason deadletter.Reason, errcode string) {
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	msg := message.NewMessage("uuid-"+orderID, []byte(`{"version":1,"order_id":"`+orderID+`","appid":"wx5f3a9c1d2e4b6a80"}`))
	msg.Metadata.Set(deadletter.HeaderKey, orderID)
	msg.Metadata.Set("trace_id", "t-"+orderID)
	msg.Metadata.Set(deadletter.HeaderDeadReason, string(reason))
	msg.Metadata.Set(deadletter.HeaderDeadErrcode, errcode)
	msg.Metadata.Set(deadletter.HeaderDeadKey, orderID)
	msg.Metadata.Set(deadletter.HeaderDeadSourceTopic, event.OrderShippedTopic)
	msg.Metadata.Set(deadletter.HeaderDeadLastFailure, "2026-11-26T01:30:00Z")
	if err := pub.Publish(deadletter.DefaultTopic, msg); err != nil {
		log.Fatal(err)
	}
}

func firstRecord(brokers []string, topic string) *sarama.ConsumerMessage {
	consumer, err := sarama.NewConsumer(brokers, testkafka.Config())
	if err != nil {
		log.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close()
	return <-pc.Messages()
}

func recordHeaders(m *sarama.ConsumerMessage) []string {
	var out []string
	for _, h := range m.Headers {
		out = append(out, string(h.Key)+"="+string(h.Value))
	}
	sort.Strings(out)
	return out
}
