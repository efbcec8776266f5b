package waybill

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/replay"
)

// TestReplayLimitEndsAPoisonLoop runs the Handler and replay.Run in turn on
// an in-process Kafka over an event whose cause nobody fixes: the Handler
// keeps HeaderReplays when it dead-letters the event again, so the replay's
// limit ends the loop, and an operator can still allow one more replay.
func TestReplayLimitEndsAPoisonLoop(t *testing.T) {
	const source, traced, dead = "rt.shipped", "rt.traced", "rt.shipped.dead"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, source, traced, dead))
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	// WeChat refuses the event every time: a cause nobody fixes.
	tr := newScriptedTracer()
	tr.On("SF1", repeatErr(wechatErr(48001), 10)...)
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.InputTopic, c.TracedTopic, c.DeadLetterTopic = source, traced, dead
	})

	first := msgOf(t, testevent.Valid("O1", "SF1"))
	require.NoError(t, h.Handle(first))

	// handleNew runs the handler over the source topic's records from
	// offset seen on, as a consumer of the source topic would.
	seen := 0
	handleNew := func() {
		recs := testkafka.ReadTopic(t, brokers, source)
		for _, rec := range recs[seen:] {
			msg, err := kafka.NewMarshaler().Unmarshal(rec)
			require.NoError(t, err)
			require.NoError(t, h.Handle(msg))
		}
		seen = len(recs)
	}
	ctx := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t.Cleanup(cancel)
		return ctx
	}
	cfg := replay.Config{Kafka: kafka.Config{Brokers: brokers}, Topic: dead}
	for round := 1; round <= replay.DefaultMaxReplays; round++ {
		rep, err := replay.Run(ctx(), cfg)
		require.NoError(t, err)
		require.Equal(t, replay.Counts{Scanned: 1, Replayed: 1}, rep.Counts, "round %d", round)
		handleNew()
	}
	letters := testkafka.ReadTopic(t, brokers, dead)
	require.Len(t, letters, replay.DefaultMaxReplays+1)
	replays, _ := testkafka.Header(letters[len(letters)-1], deadletter.HeaderReplays)
	assert.Equal(t, fmt.Sprint(replay.DefaultMaxReplays), replays, "the handler kept the counter when it dead-lettered again")

	rep, err := replay.Run(ctx(), cfg)
	require.NoError(t, err)
	assert.Equal(t, replay.Counts{Scanned: 1, SkippedOverLimit: 1}, rep.Counts)
	require.Len(t, rep.OverLimit, 1)
	assert.Equal(t, first.UUID, rep.OverLimit[0].ID)
	assert.Equal(t, "O1", rep.OverLimit[0].OrderID)
	assert.Equal(t, replay.DefaultMaxReplays, rep.OverLimit[0].Replays)
	assert.Len(t, testkafka.ReadTopic(t, brokers, source), replay.DefaultMaxReplays, "the poison event was not sent again")

	// An operator who fixed the cause may allow one more replay of the
	// latest dead letter: a new selection (so a new group), the earlier
	// copies left out by the time of their last failure.
	last, err := kafka.NewMarshaler().Unmarshal(letters[len(letters)-1])
	require.NoError(t, err)
	latest, err := deadletter.Parse(last)
	require.NoError(t, err)
	cfg.MaxReplays = replay.DefaultMaxReplays + 1
	cfg.Filter = replay.Filter{OrderIDs: []string{"O1"}, Since: latest.LastFailure}
	rep, err = replay.Run(ctx(), cfg)
	require.NoError(t, err)
	assert.Equal(t, replay.Counts{Scanned: replay.DefaultMaxReplays + 1, Replayed: 1, SkippedByFilter: replay.DefaultMaxReplays}, rep.Counts)
}
