package testkafka

import (
	"sort"
	"testing"

	"github.com/IBM/sarama"
)

// ReadTopic returns every record of topic below the end offsets it finds,
// ordered by partition and offset, from any broker (the test broker or an
// in-process kfake cluster).
func ReadTopic(t testing.TB, brokers []string, topic string) []*sarama.ConsumerMessage {
	t.Helper()
	client, err := sarama.NewClient(brokers, Config())
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatalf("kafka consumer: %v", err)
	}
	defer consumer.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	var out []*sarama.ConsumerMessage
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("end offset of %s/%d: %v", topic, p, err)
		}
		start, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("start offset of %s/%d: %v", topic, p, err)
		}
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, start)
		if err != nil {
			t.Fatalf("consume %s/%d: %v", topic, p, err)
		}
		for {
			m := <-pc.Messages()
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		if err := pc.Close(); err != nil {
			t.Fatalf("close %s/%d: %v", topic, p, err)
		}
	}
	return out
}

// Header returns the value of m's header key, and whether it has one.
func Header(m *sarama.ConsumerMessage, key string) (string, bool) {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value), true
		}
	}
	return "", false
}
