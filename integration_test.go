package waybill_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/demo"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
)

// TestIntegrationKafka runs the whole path through a real Kafka 4.x broker
// (scripts/kafka.sh): N events in, N accounted for on the two output topics,
// WeChat called once per valid event.
func TestIntegrationKafka(t *testing.T) {
	brokers := testkafka.Brokers(t)
	in, traced, dead := testkafka.Topic(t, "shipped"), testkafka.Topic(t, "traced"), testkafka.Topic(t, "dead")
	for _, topic := range []string{in, traced, dead} {
		testkafka.CreateTopic(t, brokers, topic, 3)
	}

	sandbox, err := demo.NewSandbox()
	require.NoError(t, err)
	defer sandbox.Close()
	client := sandbox.Client

	const n = 40
	cases := demo.Cases("IT", n)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sum, err := demo.Run(ctx, demo.Config{
		Kafka:      kafka.Config{Brokers: brokers, ConsumerGroup: in + "-group"},
		Client:     client,
		InputTopic: in, TracedTopic: traced, DeadLetterTopic: dead,
	}, cases)
	require.NoError(t, err)

	assert.Empty(t, sum.Mismatches(cases))
	assert.Equal(t, 0, sum.Lost)
	assert.Equal(t, n-2, sum.Traced)
	assert.Equal(t, 2, sum.DeadLettered)

	// WeChat was called once per valid event: n-1 (the invalid one never
	// reached it), unless Kafka redelivered, which the handler's counters
	// would show as extra published outcomes.
	calls := sandbox.CallsTo("trace_waybill")
	assert.Len(t, calls, n-1)
	perWaybill := map[string]int{}
	for _, c := range calls {
		perWaybill[c.Field("waybill_id")]++
	}
	for w, k := range perWaybill {
		assert.Equal(t, 1, k, "waybill %s traced %d times", w, k)
	}
	// The <>& goods text reached WeChat raw.
	var sawRaw bool
	for _, c := range calls {
		if strings.Contains(string(c.Body), "<限量版> & 礼盒") {
			sawRaw = true
		}
	}
	assert.True(t, sawRaw, "goods with <>& must reach WeChat unescaped")
}
