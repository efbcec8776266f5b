package replay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/IBM/sarama"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/internal/testkafka"
)

func TestReplayRestoresTheEventAsItWas(t *testing.T) {
	_, brokers := replayCluster(t)
	ids := writeDeadLetters(t, brokers, deadSpec{order: "O1", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay})
	dead := testkafka.ReadTopic(t, brokers, rtDead)
	require.Len(t, dead, 1)

	rep, err := Run(replayCtx(t), rtConfig(brokers))
	require.NoError(t, err)
	assert.Equal(t, Counts{Scanned: 1, Replayed: 1}, rep.Counts)
	assert.Equal(t, Counts{Scanned: 1, Replayed: 1}, rep.ByReason[deadletter.ReasonConfiguration])

	out := testkafka.ReadTopic(t, brokers, rtSource)
	require.Len(t, out, 1)
	got := out[0]
	assert.Equal(t, dead[0].Key, got.Key, "the Kafka key is kept")
	assert.Equal(t, dead[0].Partition, got.Partition, "same key, same partitioner: same partition as before")
	assert.Equal(t, dead[0].Value, got.Value, "the payload is untouched")

	msg, err := wmkafka.DefaultMarshaler{}.Unmarshal(got)
	require.NoError(t, err)
	assert.Equal(t, ids["O1"], msg.UUID, "the message UUID is the original's")
	assert.Equal(t, message.Metadata{deadletter.HeaderKey: "O1", "trace_id": "trace-O1", deadletter.HeaderReplays: "1"}, msg.Metadata,
		"the original headers, no dead-letter header, and the replay counter")
}

func TestReplayFilters(t *testing.T) {
	specs := []deadSpec{
		{order: "O1", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay.AddDate(0, 0, 1)},
		{order: "O2", appid: "wxB", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay.AddDate(0, 0, 1)},
		{order: "O3", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 61007, last: rtDay.AddDate(0, 0, 2)},
		{order: "O4", appid: "wxA", reason: deadletter.ReasonPermanent, errcode: 40003, last: rtDay.AddDate(0, 0, -2)},
		{order: "O5", appid: "wxB", reason: deadletter.ReasonInvalidEvent, last: rtDay.AddDate(0, 0, 4)},
		{order: "O6", appid: "wxA", reason: deadletter.ReasonNotYetExhausted, errcode: 931023, last: rtDay.AddDate(0, 0, 5)},
		// Not decodable: no appid; its order id comes from HeaderDeadKey.
		{order: "O7", reason: deadletter.ReasonInvalidEvent, last: rtDay.AddDate(0, 0, 5), payload: []byte(`{"order_id":`)},
	}
	cases := map[string]struct {
		f    Filter
		want []string
	}{
		"all":               {Filter{}, []string{"O1", "O2", "O3", "O4", "O5", "O6", "O7"}},
		"reason":            {Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}}, []string{"O1", "O2", "O3"}},
		"errcode":           {Filter{Errcodes: []int{48001}}, []string{"O1", "O2"}},
		"appid":             {Filter{AppIDs: []string{"wxA"}}, []string{"O1", "O3", "O4", "O6"}},
		"time range":        {Filter{Since: rtDay, Until: rtDay.AddDate(0, 0, 3)}, []string{"O1", "O2", "O3"}},
		"order id":          {Filter{OrderIDs: []string{"O5"}}, []string{"O5"}},
		"undecodable order": {Filter{OrderIDs: []string{"O7"}}, []string{"O7"}},
		"combined": {Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}, Errcodes: []int{48001}, AppIDs: []string{"wxA"}},
			[]string{"O1"}},
	}
	var extra []string
	for name := range cases {
		extra = append(extra, "to."+name)
	}
	_, brokers := replayCluster(t, extra...)
	writeDeadLetters(t, brokers, specs...)

	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := rtConfig(brokers)
			cfg.To, cfg.Filter = "to."+name, c.f
			rep, err := Run(replayCtx(t), cfg)
			require.NoError(t, err)
			assert.Equal(t, Counts{Scanned: len(specs), Replayed: len(c.want), SkippedByFilter: len(specs) - len(c.want)},
				rep.Counts)
			assert.Equal(t, c.want, ordersOf(testkafka.ReadTopic(t, brokers, cfg.To)))
		})
	}
}

func TestReplayDryRunChangesNothing(t *testing.T) {
	_, brokers := replayCluster(t)
	writeDeadLetters(t, brokers,
		deadSpec{order: "O1", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay},
		deadSpec{order: "O2", appid: "wxB", reason: deadletter.ReasonPermanent, errcode: 40003, last: rtDay},
		deadSpec{order: "O3", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 61007, last: rtDay, replays: 3},
	)
	cfg := rtConfig(brokers)
	cfg.Filter.Reasons = []deadletter.Reason{deadletter.ReasonConfiguration}
	cfg.DryRun = true
	var seen []Progress
	cfg.Progress = func(p Progress) { seen = append(seen, p) }

	rep, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.True(t, rep.DryRun)
	assert.Equal(t, Counts{Scanned: 3, Replayed: 1, SkippedByFilter: 1, SkippedOverLimit: 1}, rep.Counts)
	require.Len(t, seen, 3)
	outcomes := map[string]Outcome{}
	for _, p := range seen {
		outcomes[p.Event.OrderID] = p.Event.Outcome
		assert.Equal(t, int64(3), p.Total)
	}
	assert.Equal(t, map[string]Outcome{"O1": WouldReplay, "O2": SkippedByFilter, "O3": SkippedOverLimit}, outcomes)
	assert.Equal(t, 3, seen[2].Scanned, "progress counts accumulate")

	assert.Empty(t, testkafka.ReadTopic(t, brokers, rtSource), "a dry run publishes nothing")
	committed := groupOffsets(t, brokers, cfg.Group())
	assert.Equal(t, map[int32]int64{0: -1, 1: -1, 2: -1}, committed, "a dry run commits nothing")

	// The real run does what the dry run said.
	cfg.DryRun, cfg.Progress = false, nil
	real, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, rep.Counts, real.Counts)
	assert.Equal(t, []string{"O1"}, ordersOf(testkafka.ReadTopic(t, brokers, rtSource)))
}

func TestReplayIntoItsOwnTopicStopsAtTheEndOffsets(t *testing.T) {
	_, brokers := replayCluster(t)
	var specs []deadSpec
	for i := range 12 {
		specs = append(specs, deadSpec{order: fmt.Sprintf("O%02d", i), appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay})
	}
	writeDeadLetters(t, brokers, specs...)
	cfg := rtConfig(brokers)
	cfg.To = rtDead

	rep, err := Run(replayCtx(t), cfg)
	require.NoError(t, err, "replaying into the topic it reads must terminate")
	assert.Equal(t, Counts{Scanned: 12, Replayed: 12}, rep.Counts, "only what was there at the start")
	var total int64
	for _, rg := range rep.Ranges {
		total += rg.End - rg.Start
	}
	assert.Equal(t, int64(12), total)
	assert.Len(t, testkafka.ReadTopic(t, brokers, rtDead), 24)

	// The next run with the same group starts where the first stopped and
	// sees only the copies: no longer dead letters, so nothing moves.
	again, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, Counts{Scanned: 12, SkippedInvalid: 12}, again.Counts)
	assert.Len(t, testkafka.ReadTopic(t, brokers, rtDead), 24)

	last, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, Counts{}, last.Counts, "nothing new since")
}

func TestReplayResumesAfterInterruptWithoutDoubles(t *testing.T) {
	_, brokers := replayCluster(t)
	const n = 60
	ids := manyDeadLetters(t, brokers, n)

	ctx, cancel := context.WithCancel(replayCtx(t))
	cfg := rtConfig(brokers)
	cfg.Progress = func(p Progress) {
		if p.Replayed == n/3 {
			cancel()
		}
	}
	first, err := Run(ctx, cfg)
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, first.Replayed, n, "interrupted before the end")
	require.GreaterOrEqual(t, first.Replayed, n/3)

	cfg.Progress = nil
	second, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, n, first.Replayed+second.Replayed, "the second run replays exactly the rest")

	copies := copiesByID(t, testkafka.ReadTopic(t, brokers, rtSource))
	assert.Len(t, copies, n, "no event lost")
	for order, id := range ids {
		assert.Equal(t, 1, copies[id], "order %s: a clean stop commits what it republished", order)
	}
}

// TestReplayCrashDoublesAtMostTheBatch kills the replay's commits from some
// point on, as a crash would, and checks the documented bound: the rerun
// republishes again at most Batch records per partition, and loses nothing.
func TestReplayCrashDoublesAtMostTheBatch(t *testing.T) {
	cluster, brokers := replayCluster(t)
	const n, batch, partitions = 90, 4, 3
	ids := manyDeadLetters(t, brokers, n)

	var crashed atomic.Bool
	// After the crash no commit reaches the broker: it drops the connection.
	cluster.ControlKey(int16(kmsg.OffsetCommit), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !crashed.Load() {
			return nil, nil, false
		}
		return nil, errors.New("crashed"), true
	})

	ctx, cancel := context.WithCancel(replayCtx(t))
	cfg := rtConfig(brokers)
	cfg.Batch = batch
	var once sync.Once
	cfg.Progress = func(p Progress) {
		if p.Replayed == 2*n/3 {
			once.Do(func() { crashed.Store(true); cancel() })
		}
	}
	first, err := Run(ctx, cfg)
	require.Error(t, err)
	require.Less(t, first.Replayed, n)

	crashed.Store(false)
	cfg.Progress = nil
	second, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)

	copies := copiesByID(t, testkafka.ReadTopic(t, brokers, rtSource))
	assert.Len(t, copies, n, "no event lost")
	doubled := 0
	for _, id := range ids {
		require.Positive(t, copies[id])
		doubled += copies[id] - 1
	}
	assert.LessOrEqual(t, doubled, batch*partitions, "at most the in-flight batch of each partition is republished twice")
	assert.Equal(t, n+doubled, first.Replayed+second.Replayed)
	t.Logf("first run %d, second run %d, doubled %d", first.Replayed, second.Replayed, doubled)
}

func TestReplayRateCapsRepublishing(t *testing.T) {
	// Under synctest the in-process Kafka's own timers would run in fake
	// time too, so the cap is checked by the pacer test; here the replay
	// must still finish every event with a cap in place.
	_, brokers := replayCluster(t)
	manyDeadLetters(t, brokers, 5)
	cfg := rtConfig(brokers)
	cfg.Rate = 1000
	rep, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, 5, rep.Replayed)
}

func TestReplayNeverCreatesTopics(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(3, rtSource, rtDead))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()
	writeDeadLetters(t, brokers, deadSpec{order: "O1", appid: "wxA", reason: deadletter.ReasonPermanent, errcode: 40003, last: rtDay})

	cfg := rtConfig(brokers)
	cfg.Topic = "no.such.topic"
	_, err = Run(replayCtx(t), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no.such.topic")
	assert.ErrorIs(t, err, sarama.ErrUnknownTopicOrPartition)

	cfg = rtConfig(brokers)
	cfg.To = "misspelt.topic"
	rep, err := Run(replayCtx(t), cfg)
	require.Error(t, err)
	assert.ErrorIs(t, err, sarama.ErrUnknownTopicOrPartition)
	assert.Zero(t, rep.Replayed)

	admin, err := sarama.NewClusterAdminFromClient(rtClient(t, brokers))
	require.NoError(t, err)
	topics, err := admin.ListTopics()
	require.NoError(t, err)
	assert.NotContains(t, topics, "no.such.topic")
	assert.NotContains(t, topics, "misspelt.topic")
}

func TestReplayTwoMembersOfOneGroupShareTheWorkAndStop(t *testing.T) {
	_, brokers := replayCluster(t)
	const n, batch, partitions = 90, 4, 3
	ids := manyDeadLetters(t, brokers, n)
	cfg := rtConfig(brokers)
	cfg.Kafka.ConsumerGroup, cfg.Batch = "shared", batch

	var wg sync.WaitGroup
	reports := make([]*Report, 2)
	errs := make([]error, 2)
	for i := range reports {
		wg.Go(func() { reports[i], errs[i] = Run(replayCtx(t), cfg) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])

	copies := copiesByID(t, testkafka.ReadTopic(t, brokers, rtSource))
	doubled := 0
	for order, id := range ids {
		require.Positive(t, copies[id], "order %s lost", order)
		doubled += copies[id] - 1
	}
	assert.LessOrEqual(t, doubled, batch*partitions)
	assert.Equal(t, n+doubled, reports[0].Replayed+reports[1].Replayed)
	t.Logf("members replayed %d and %d, doubled %d", reports[0].Replayed, reports[1].Replayed, doubled)
}

func TestReplayStopsWhenARepublishFailsAndResumes(t *testing.T) {
	cluster, brokers := replayCluster(t)
	const n = 60
	ids := manyDeadLetters(t, brokers, n)

	// From some point on, the broker refuses writes to the source topic.
	var refuse atomic.Bool
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		produce := req.(*kmsg.ProduceRequest)
		if !refuse.Load() || len(produce.Topics) == 0 || produce.Topics[0].Topic != rtSource {
			return nil, nil, false
		}
		resp := produce.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range produce.Topics {
			t := kmsg.NewProduceResponseTopic()
			t.Topic, t.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				p := kmsg.NewProduceResponseTopicPartition()
				p.Partition, p.ErrorCode = rp.Partition, kerr.TopicAuthorizationFailed.Code
				t.Partitions = append(t.Partitions, p)
			}
			resp.Topics = append(resp.Topics, t)
		}
		return resp, nil, true
	})

	cfg := rtConfig(brokers)
	cfg.Progress = func(p Progress) {
		if p.Replayed == n/2 {
			refuse.Store(true)
		}
	}
	first, err := Run(replayCtx(t), cfg)
	require.Error(t, err)
	assert.ErrorIs(t, err, sarama.ErrTopicAuthorizationFailed)
	assert.Contains(t, err.Error(), "republish")
	require.Less(t, first.Replayed, n)

	refuse.Store(false)
	cfg.Progress = nil
	second, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, n, first.Replayed+second.Replayed, "the failed event was not marked, so the rerun sends it")

	copies := copiesByID(t, testkafka.ReadTopic(t, brokers, rtSource))
	for order, id := range ids {
		assert.Equal(t, 1, copies[id], "order %s", order)
	}
}

// TestReplaySkipsReducedDeadLetters: a dead letter published without its
// payload (too large for the dead-letter topic) is not replayed as an empty
// event.
func TestReplaySkipsReducedDeadLetters(t *testing.T) {
	_, brokers := replayCluster(t, "to.reduced")
	writeDeadLetters(t, brokers,
		deadSpec{order: "O1", appid: "wxA", reason: deadletter.ReasonConfiguration, errcode: 48001, last: rtDay},
		deadSpec{order: "O2", reason: deadletter.ReasonInvalidEvent, last: rtDay, payload: []byte(`{"order_id":"` + strings.Repeat("x", 10_000) + `"}`)},
	)
	cfg := rtConfig(brokers)
	cfg.To = "to.reduced"
	rep, err := Run(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, Counts{Scanned: 2, Replayed: 1, SkippedInvalid: 1}, rep.Counts)
	assert.Equal(t, []string{"O1"}, ordersOf(testkafka.ReadTopic(t, brokers, cfg.To)))
}
