package testkafka

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// freshTopic creates a new topic through the package's own helpers and
// returns the brokers, its name and an admin client to inspect it.
func freshTopic(t *testing.T, prefix string, partitions int32) ([]string, string, sarama.ClusterAdmin) {
	t.Helper()
	brokers := Brokers(t)
	topic := Topic(t, prefix)
	CreateTopic(t, brokers, topic, partitions)
	admin, err := sarama.NewClusterAdmin(brokers, Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return brokers, topic, admin
}

// TestRoundTrip proves the broker is real and usable with the project's
// protocol version: a record produced with acks=all to a fresh three-partition
// topic is read back from the partition and offset the broker assigned, with
// its key, value and headers intact.
func TestRoundTrip(t *testing.T) {
	brokers, topic, admin := freshTopic(t, "roundtrip", 3)
	metas, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(metas[0].Partitions); got != 3 {
		t.Fatalf("topic %s has %d partitions, want 3", topic, got)
	}

	pcfg := Config()
	pcfg.Producer.RequiredAcks = sarama.WaitForAll
	pcfg.Producer.Return.Successes = true
	producer, err := sarama.NewSyncProducer(brokers, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	sent := &sarama.ProducerMessage{
		Topic:   topic,
		Key:     sarama.StringEncoder("order-42"),
		Value:   sarama.StringEncoder(`{"goods_name":"茶叶 <礼盒> & 杯"}`),
		Headers: []sarama.RecordHeader{{Key: []byte("source"), Value: []byte("testkafka")}},
	}
	partition, offset, err := producer.SendMessage(sent)
	if err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}

	consumer, err := sarama.NewConsumer(brokers, Config())
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, partition, offset)
	if err != nil {
		t.Fatalf("consume %s/%d@%d: %v", topic, partition, offset, err)
	}
	defer pc.Close()

	// The bound only keeps a broken broker from hanging the run; it is not a
	// speed assertion.
	select {
	case got := <-pc.Messages():
		if got.Offset != offset || string(got.Key) != "order-42" || string(got.Value) != `{"goods_name":"茶叶 <礼盒> & 杯"}` {
			t.Fatalf("read %s/%d@%d key=%q value=%q, want offset %d key order-42 and the sent value",
				got.Topic, got.Partition, got.Offset, got.Key, got.Value, offset)
		}
		if len(got.Headers) != 1 || string(got.Headers[0].Key) != "source" || string(got.Headers[0].Value) != "testkafka" {
			t.Fatalf("headers = %v, want source=testkafka", got.Headers)
		}
	case err := <-pc.Errors():
		t.Fatalf("consume: %v", err)
	case <-time.After(time.Minute):
		t.Fatalf("no record from %s/%d@%d within a minute", topic, partition, offset)
	}
}

// TestCreateTopicTwiceFails checks that CreateTopic really asks the broker: a
// second creation of the same name is refused.
func TestCreateTopicTwiceFails(t *testing.T) {
	_, topic, admin := freshTopic(t, "twice", 1)
	err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false)
	if !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		t.Fatalf("second CreateTopic(%q) = %v, want %v", topic, err, sarama.ErrTopicAlreadyExists)
	}
}

var legalTopic = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func TestTopicUniqueAndLegal(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		name := Topic(t, "order.shipped")
		if seen[name] {
			t.Fatalf("Topic returned %q twice", name)
		}
		seen[name] = true
		if !strings.HasPrefix(name, "order.shipped-TestTopicUniqueAndLegal-") || !legalTopic.MatchString(name) {
			t.Fatalf("Topic = %q, want a legal name starting with the prefix and test name", name)
		}
	}
	t.Run("sub test/with:odd chars", func(t *testing.T) {
		if name := Topic(t, "dead letter"); !legalTopic.MatchString(name) {
			t.Fatalf("Topic = %q, not a legal Kafka topic name", name)
		}
	})
}

func TestTopicNameLongKeepsSuffix(t *testing.T) {
	name := topicName(strings.Repeat("p", 300), "TestX", "abcdef")
	if len(name) != maxTopicLen || !strings.HasSuffix(name, "-abcdef") {
		t.Fatalf("topicName = %q (len %d), want %d chars ending in -abcdef", name, len(name), maxTopicLen)
	}
}
