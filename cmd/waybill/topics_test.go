package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testkafka"
)

// TestTopicsCreateThenCheck runs `waybill topics` against the real broker:
// check names what is missing, create makes it (twice changes nothing),
// and check then reports every topic with its partitions and replication.
func TestTopicsCreateThenCheck(t *testing.T) {
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "topics.in")
	args := []string{"-brokers", strings.Join(brokers, ","), "-input-topic", in, "-traced-topic", in + ".traced",
		"-dead-letter-topic", in + ".dead", "-parking-tiers", "1m,1h", "-topic-partitions", "4", "-topic-replication", "1"}
	names := []string{in, in + ".traced", in + ".dead", in + ".delay.1m0s", in + ".delay.1h0m0s", in + ".delay.window"}

	var out, errOut bytes.Buffer
	assert.Equal(t, 1, topicsMain(append([]string{"check"}, args...), env(nil), &out, &errOut), errOut.String())
	for _, n := range names {
		assert.Contains(t, out.String(), "missing  "+n+"\n")
	}
	assert.Contains(t, errOut.String(), "6 of 6 topics missing")

	out.Reset()
	require.Equal(t, 0, topicsMain(append([]string{"create"}, args...), env(nil), &out, &errOut), errOut.String())
	for _, n := range names {
		assert.Contains(t, out.String(), "created "+n+" (4 partitions, replication 1)")
		assert.Contains(t, out.String(), "ok       "+n+"  partitions=4 replication=1")
	}

	out.Reset()
	require.Equal(t, 0, topicsMain(append([]string{"create"}, args...), env(nil), &out, &errOut), errOut.String())
	assert.NotContains(t, out.String(), "created", "create is idempotent")
	out.Reset()
	require.Equal(t, 0, topicsMain(append([]string{"check"}, args...), env(nil), &out, &errOut), errOut.String())
	assert.Equal(t, len(names), strings.Count(out.String(), "ok       "))

	// The service's config file names the same topics: check reads it,
	// merchants and the service's other keys left to the service.
	conf := filepath.Join(t.TempDir(), "waybill.yaml")
	require.NoError(t, os.WriteFile(conf, []byte("brokers: ["+strings.Join(brokers, ", ")+"]\ninput-topic: "+in+
		"\ntraced-topic: "+in+".traced\ndead-letter-topic: "+in+".dead\nparking-tiers: [1m, 1h]\nrate: 5\n"+
		"merchants:\n  - appid: wx1\n    secret_env: NOT_NEEDED_HERE\n"), 0o600))
	out.Reset()
	require.Equal(t, 0, topicsMain([]string{"check", "-config", conf}, env(nil), &out, &errOut), errOut.String())
	assert.Equal(t, len(names), strings.Count(out.String(), "ok       "))

	assert.Equal(t, 0, topicsMain([]string{"-h"}, env(nil), &out, &errOut))
	assert.Equal(t, 0, topicsMain([]string{"check", "-h"}, env(nil), &out, &errOut))
	assert.Equal(t, 2, topicsMain([]string{"prune"}, env(nil), &out, &errOut))
}

// TestServiceRefusesToStartWithoutADelayTopic: the service checks its topics
// first and names the one missing; -create-topics makes it instead.
func TestServiceRefusesToStartWithoutADelayTopic(t *testing.T) {
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "refuse.in")
	for _, topic := range []string{in, in + ".traced", in + ".dead", in + ".delay.1m0s", in + ".delay.window"} {
		testkafka.CreateTopic(t, brokers, topic, 1)
	}
	secrets := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(secrets, []byte("wxapp1=secret\n"), 0o600))
	args := []string{"-brokers", strings.Join(brokers, ","), "-secrets-file", secrets,
		"-input-topic", in, "-traced-topic", in + ".traced", "-dead-letter-topic", in + ".dead", "-parking-tiers", "1m,1h"}
	var logs bytes.Buffer
	assert.Equal(t, 1, run(context.Background(), args, env(nil), &logs))
	assert.Contains(t, logs.String(), "missing topics: "+in+".delay.1h0m0s ")

	// -create-topics: the same check makes what is missing, and passes.
	c, err := parseConfig(append(args, "-create-topics", "-topic-replication", "1"), env(nil), &logs)
	require.NoError(t, err)
	names := neededTopics(c.InputTopic, c.TracedTopic, c.DeadLetterTopic, c.Parking)
	created, err := ensureTopics(c.Kafka, names, c.CreateTopics, c.TopicPartitions, c.TopicReplication)
	require.NoError(t, err)
	assert.Equal(t, []string{in + ".delay.1h0m0s"}, created)
	_, err = ensureTopics(c.Kafka, names, false, 0, 0)
	assert.NoError(t, err, "every topic there now")
}
