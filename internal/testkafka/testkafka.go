// Package testkafka gives tests a real Apache Kafka 4.x broker; the tests of
// every package that needs Kafka import it.
//
// Brokers returns the addresses of the broker named by KAFKA_BROKERS or, when
// that is unset, of the private broker that scripts/kafka.sh starts on a free
// port of 127.0.0.1. The first call in a test binary runs the script; every
// test binary of a `go test ./...` run shares the one broker, which keeps
// running afterwards until `scripts/kafka.sh stop`. A test that cannot get a
// broker fails, naming the script: it never skips, so a green run always means
// the real broker was exercised.
//
// Topics are shared across test binaries and across runs against a reused
// broker, so tests name theirs with Topic and create them with CreateTopic.
package testkafka

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/waybillkit/waybill/internal/testservice"
	"github.com/waybillkit/waybill/internal/textlist"
)

// EnvBrokers names the environment variable with a comma-separated list of
// broker addresses to use instead of starting one (CI exports it).
const EnvBrokers = "KAFKA_BROKERS"

// script is the repository-relative path of the script that starts the broker.
const script = "scripts/kafka.sh"

// startTimeout bounds one run of the script. A first run downloads the broker
// from Maven Central, so it is generous; the script enforces its own, shorter,
// limit on the broker's startup.
const startTimeout = 10 * time.Minute

// topicReadyTimeout bounds the wait for a new topic's partitions to get leaders.
const topicReadyTimeout = 30 * time.Second

// Brokers returns the addresses of a running Kafka 4.x broker, starting one
// through scripts/kafka.sh on first use when KAFKA_BROKERS is unset. It fails
// the test when no broker can be had.
func Brokers(t testing.TB) []string {
	t.Helper()
	if env := os.Getenv(EnvBrokers); strings.TrimSpace(env) != "" {
		return textlist.Split(env, ",")
	}
	addrs, err := startOnce()
	if err != nil {
		t.Fatalf("testkafka: no Kafka broker (%s unset, and %s failed): %v", EnvBrokers, script, err)
	}
	return addrs
}

// startOnce runs scripts/kafka.sh start once per test binary.
var startOnce = sync.OnceValues(func() ([]string, error) {
	addr, err := testservice.Start(script, startTimeout)
	if err != nil {
		return nil, err
	}
	return textlist.Split(addr, ","), nil
})

// Config returns a sarama configuration for talking to the test broker. Kafka
// 4 removed the protocol versions older clients default to, so the version is
// set explicitly.
func Config() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V4_0_0_0
	cfg.ClientID = "waybill-test"
	return cfg
}

// Topic returns a topic name that no other test, test binary or earlier run
// uses: prefix, the test's name and a random suffix, restricted to the
// characters Kafka accepts.
func Topic(t testing.TB, prefix string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testkafka: random topic suffix: %v", err)
	}
	return topicName(prefix, t.Name(), hex.EncodeToString(b[:]))
}

// maxTopicLen is Kafka's limit on topic name length.
const maxTopicLen = 249

// topicName joins prefix, test name and suffix with '-', replacing any
// character Kafka rejects in a topic name and keeping the suffix when the
// result would be too long.
func topicName(prefix, test, suffix string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
				return r
			}
			return '-'
		}, s)
	}
	head := clean(prefix) + "-" + clean(test)
	if room := maxTopicLen - len(suffix) - 1; len(head) > room {
		head = head[:room]
	}
	return head + "-" + suffix
}

// CreateTopic creates topic name with the given number of partitions (one
// replica each) and waits until every partition has a leader, so the test can
// produce to it at once.
func CreateTopic(t testing.TB, brokers []string, name string, partitions int32) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, Config())
	if err != nil {
		t.Fatalf("testkafka: connect to %v: %v", brokers, err)
	}
	defer admin.Close()
	detail := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}
	if err := admin.CreateTopic(name, detail, false); err != nil {
		t.Fatalf("testkafka: create topic %q: %v", name, err)
	}
	if err := waitLeaders(admin, name, int(partitions)); err != nil {
		t.Fatalf("testkafka: topic %q: %v", name, err)
	}
}

// waitLeaders polls the topic's metadata until it has n partitions, each with
// a leader. Creation is committed by the controller before every broker has
// applied it, and producing in that gap fails.
func waitLeaders(admin sarama.ClusterAdmin, name string, n int) error {
	deadline := time.Now().Add(topicReadyTimeout)
	var last error
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		last = leadersReady(admin, name, n)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("partitions not ready after %v: %w", topicReadyTimeout, last)
		}
		time.Sleep(delay)
	}
}

// leadersReady reports why the topic is not yet usable, or nil when it is.
func leadersReady(admin sarama.ClusterAdmin, name string, n int) error {
	metas, err := admin.DescribeTopics([]string{name})
	if err != nil {
		return fmt.Errorf("describe: %w", err)
	}
	if len(metas) != 1 {
		return fmt.Errorf("describe returned %d topics", len(metas))
	}
	m := metas[0]
	if m.Err != sarama.ErrNoError {
		return fmt.Errorf("describe: %w", m.Err)
	}
	if len(m.Partitions) != n {
		return fmt.Errorf("%d of %d partitions known", len(m.Partitions), n)
	}
	for _, p := range m.Partitions {
		if p.Err != sarama.ErrNoError || p.Leader < 0 {
			return fmt.Errorf("partition %d has no leader (%v)", p.ID, p.Err)
		}
	}
	return nil
}
