package replay

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
)

// Topics of the in-process Kafka the replay tests run on.
const (
	rtSource = "rt.shipped"
	rtDead   = "rt.shipped.dead"
	rtTraced = "rt.traced"
)

// replayCluster starts an in-process Kafka with three partitions for each of
// rtSource, rtDead, rtTraced and the extra topics.
func replayCluster(t *testing.T, extra ...string) (*kfake.Cluster, []string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, append([]string{rtSource, rtDead, rtTraced}, extra...)...))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

// deadSpec describes one dead letter to write.
type deadSpec struct {
	order, appid string
	reason       deadletter.Reason
	errcode      int // 0: WeChat was not called
	last         time.Time
	replays      int    // HeaderReplays of the original; 0: absent
	payload      []byte // nil: a valid order.shipped for order and appid
}

var rtDay = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// maxDeadBytes bounds the dead letters the tests write, as the Handler's
// Config.MaxDeadLetterBytes does.
const maxDeadBytes = 8000

// writeDeadLetters dead-letters the events of specs to rtDead as the handler
// does (deadletter.Letter.Message over a Kafka publisher), as if consumed
// from rtSource, and returns their message UUIDs by order id.
func writeDeadLetters(t *testing.T, brokers []string, specs ...deadSpec) map[string]string {
	t.Helper()
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	ids := map[string]string{}
	for i, s := range specs {
		payload := s.payload
		if payload == nil {
			payload = testevent.JSON(t, func(ev *event.OrderShipped) {
				ev.OrderID, ev.WaybillID, ev.AppID = s.order, "SF"+s.order, s.appid
			})
		}
		orig := message.NewMessage(watermill.NewUUID(), payload)
		orig.Metadata.Set(deadletter.HeaderKey, s.order)
		orig.Metadata.Set("trace_id", "trace-"+s.order)
		if s.replays > 0 {
			orig.Metadata.Set(deadletter.HeaderReplays, fmt.Sprint(s.replays))
		}
		d := &deadletter.Letter{Reason: s.reason, Errmsg: "from the test", Attempts: 1,
			SourceTopic: rtSource, SourcePartition: 0, SourceOffset: int64(i),
			FirstFailure: s.last.Add(-time.Minute), LastFailure: s.last}
		if s.errcode != 0 {
			d.HasErrcode, d.Errcode = true, s.errcode
		}
		require.NoError(t, pub.Publish(rtDead, d.Message(orig, s.order, maxDeadBytes)))
		ids[s.order] = orig.UUID
	}
	return ids
}

// rtClient returns a Kafka client closed with the test.
func rtClient(t testing.TB, brokers []string) sarama.Client {
	t.Helper()
	client, err := sarama.NewClient(brokers, testkafka.Config())
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// ordersOf returns the order ids (Kafka keys) of msgs, sorted.
func ordersOf(msgs []*sarama.ConsumerMessage) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Key)
	}
	sort.Strings(out)
	return out
}

func rtConfig(brokers []string) Config {
	return Config{Kafka: kafka.Config{Brokers: brokers}, Topic: rtDead}
}

func replayCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// groupOffsets returns the committed offsets of group on rtDead.
func groupOffsets(t *testing.T, brokers []string, group string) map[int32]int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdminFromClient(rtClient(t, brokers))
	require.NoError(t, err)
	out := map[int32]int64{0: -1, 1: -1, 2: -1}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{rtDead: {0, 1, 2}})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return out
	}
	require.NoError(t, err)
	for p, b := range resp.Blocks[rtDead] {
		out[p] = b.Offset
	}
	return out
}

// manyDeadLetters writes n configuration dead letters, orders O000…, spread
// over the partitions by their keys.
func manyDeadLetters(t *testing.T, brokers []string, n int) map[string]string {
	t.Helper()
	specs := make([]deadSpec, n)
	for i := range specs {
		specs[i] = deadSpec{order: fmt.Sprintf("O%03d", i), appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay}
	}
	return writeDeadLetters(t, brokers, specs...)
}

// copiesByID counts the records of msgs per message UUID.
func copiesByID(t *testing.T, msgs []*sarama.ConsumerMessage) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range msgs {
		id, ok := testkafka.Header(m, wmkafka.UUIDHeaderKey)
		require.True(t, ok)
		out[id]++
	}
	return out
}
