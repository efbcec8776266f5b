package waybill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
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
	reason       Reason
	errcode      int // 0: WeChat was not called
	last         time.Time
	replays      int    // HeaderReplays of the original; 0: absent
	payload      []byte // nil: a valid order.shipped for order and appid
}

var rtDay = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// writeDeadLetters dead-letters the events of specs to rtDead as the handler
// does (results.dead over a Kafka publisher), as if consumed from rtSource,
// and returns their message UUIDs by order id.
func writeDeadLetters(t *testing.T, brokers []string, specs ...deadSpec) map[string]string {
	t.Helper()
	pub, err := NewKafkaPublisher(KafkaConfig{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	res := results{pub: pub, deadTopic: rtDead, maxDead: 8000}
	ids := map[string]string{}
	for i, s := range specs {
		payload := s.payload
		if payload == nil {
			ev := validEvent(s.order, "SF"+s.order)
			ev.AppID = s.appid
			payload, err = json.Marshal(ev)
			require.NoError(t, err)
		}
		orig := message.NewMessage(watermill.NewUUID(), payload)
		orig.Metadata.Set(HeaderKey, s.order)
		orig.Metadata.Set("trace_id", "trace-"+s.order)
		if s.replays > 0 {
			orig.Metadata.Set(HeaderReplays, fmt.Sprint(s.replays))
		}
		d := &DeadLetter{Reason: s.reason, Errmsg: "from the test", Attempts: 1,
			SourceTopic: rtSource, SourcePartition: 0, SourceOffset: int64(i),
			FirstFailure: s.last.Add(-time.Minute), LastFailure: s.last}
		if s.errcode != 0 {
			d.HasErrcode, d.Errcode = true, s.errcode
		}
		require.NoError(t, res.dead(orig, s.order, d))
		ids[s.order] = orig.UUID
	}
	return ids
}

// rtClient returns a Kafka client closed with the test.
func rtClient(t testing.TB, brokers []string) sarama.Client {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = KafkaVersion
	client, err := sarama.NewClient(brokers, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// ReadTopic and HeaderOf are readTopic and headerOf for the tests of
// package waybill_test.
var (
	ReadTopic = readTopic
	HeaderOf  = headerOf
)

// readTopic returns every record of topic below the end offsets it finds,
// ordered by partition and offset.
func readTopic(t testing.TB, brokers []string, topic string) []*sarama.ConsumerMessage {
	t.Helper()
	client := rtClient(t, brokers)
	consumer, err := sarama.NewConsumerFromClient(client)
	require.NoError(t, err)
	defer consumer.Close()
	parts, err := client.Partitions(topic)
	require.NoError(t, err)
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	var out []*sarama.ConsumerMessage
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		start, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, start)
		require.NoError(t, err)
		for {
			m := <-pc.Messages()
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		require.NoError(t, pc.Close())
	}
	return out
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

func headerOf(m *sarama.ConsumerMessage, key string) (string, bool) {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func rtConfig(brokers []string) ReplayConfig {
	return ReplayConfig{Kafka: KafkaConfig{Brokers: brokers}, Topic: rtDead}
}

func replayCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestReplayRestoresTheEventAsItWas(t *testing.T) {
	_, brokers := replayCluster(t)
	ids := writeDeadLetters(t, brokers, deadSpec{order: "O1", appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay})
	dead := readTopic(t, brokers, rtDead)
	require.Len(t, dead, 1)

	rep, err := Replay(replayCtx(t), rtConfig(brokers))
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{Scanned: 1, Replayed: 1}, rep.ReplayCounts)
	assert.Equal(t, ReplayCounts{Scanned: 1, Replayed: 1}, rep.ByReason[ReasonConfiguration])

	out := readTopic(t, brokers, rtSource)
	require.Len(t, out, 1)
	got := out[0]
	assert.Equal(t, dead[0].Key, got.Key, "the Kafka key is kept")
	assert.Equal(t, dead[0].Partition, got.Partition, "same key, same partitioner: same partition as before")
	assert.Equal(t, dead[0].Value, got.Value, "the payload is untouched")

	msg, err := kafka.DefaultMarshaler{}.Unmarshal(got)
	require.NoError(t, err)
	assert.Equal(t, ids["O1"], msg.UUID, "the message UUID is the original's")
	assert.Equal(t, message.Metadata{HeaderKey: "O1", "trace_id": "trace-O1", HeaderReplays: "1"}, msg.Metadata,
		"the original headers, no dead-letter header, and the replay counter")
}

func TestReplayFilterMatch(t *testing.T) {
	base := func() ReplayEvent {
		return ReplayEvent{OrderID: "O1", AppID: "wxA", Dead: &DeadLetter{
			Reason: ReasonConfiguration, HasErrcode: true, Errcode: 48001, LastFailure: rtDay.Add(12 * time.Hour)}}
	}
	noErrcode := base()
	noErrcode.Dead = &DeadLetter{Reason: ReasonInvalidEvent, LastFailure: rtDay}
	notDead := base()
	notDead.Dead = nil
	noTime := base()
	noTime.Dead.LastFailure = time.Time{}

	cases := map[string]struct {
		f    ReplayFilter
		ev   ReplayEvent
		want bool
	}{
		"zero filter selects all":           {ReplayFilter{}, base(), true},
		"zero filter skips non dead letter": {ReplayFilter{}, notDead, false},
		"reason in list":                    {ReplayFilter{Reasons: []Reason{ReasonPermanent, ReasonConfiguration}}, base(), true},
		"reason not in list":                {ReplayFilter{Reasons: []Reason{ReasonPermanent}}, base(), false},
		"errcode in list":                   {ReplayFilter{Errcodes: []int{61007, 48001}}, base(), true},
		"errcode not in list":               {ReplayFilter{Errcodes: []int{61007}}, base(), false},
		"no errcode never matches codes":    {ReplayFilter{Errcodes: []int{0}}, noErrcode, false},
		"appid":                             {ReplayFilter{AppIDs: []string{"wxA"}}, base(), true},
		"other appid":                       {ReplayFilter{AppIDs: []string{"wxB"}}, base(), false},
		"order id":                          {ReplayFilter{OrderIDs: []string{"O9", "O1"}}, base(), true},
		"other order id":                    {ReplayFilter{OrderIDs: []string{"O9"}}, base(), false},
		"since is inclusive":                {ReplayFilter{Since: rtDay.Add(12 * time.Hour)}, base(), true},
		"before since":                      {ReplayFilter{Since: rtDay.Add(13 * time.Hour)}, base(), false},
		"until is exclusive":                {ReplayFilter{Until: rtDay.Add(12 * time.Hour)}, base(), false},
		"before until":                      {ReplayFilter{Until: rtDay.Add(13 * time.Hour)}, base(), true},
		"time filter needs a time":          {ReplayFilter{Since: rtDay.AddDate(-1, 0, 0)}, noTime, false},
		"all conditions hold": {ReplayFilter{Reasons: []Reason{ReasonConfiguration}, Errcodes: []int{48001},
			AppIDs: []string{"wxA"}, OrderIDs: []string{"O1"}, Since: rtDay, Until: rtDay.AddDate(0, 0, 1)}, base(), true},
		"one condition fails": {ReplayFilter{Reasons: []Reason{ReasonConfiguration}, Errcodes: []int{48001},
			AppIDs: []string{"wxB"}}, base(), false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, c.want, c.f.Match(&c.ev))
		})
	}
}

func TestReplayFilters(t *testing.T) {
	specs := []deadSpec{
		{order: "O1", appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay.AddDate(0, 0, 1)},
		{order: "O2", appid: "wxB", reason: ReasonConfiguration, errcode: 48001, last: rtDay.AddDate(0, 0, 1)},
		{order: "O3", appid: "wxA", reason: ReasonConfiguration, errcode: 61007, last: rtDay.AddDate(0, 0, 2)},
		{order: "O4", appid: "wxA", reason: ReasonPermanent, errcode: 40003, last: rtDay.AddDate(0, 0, -2)},
		{order: "O5", appid: "wxB", reason: ReasonInvalidEvent, last: rtDay.AddDate(0, 0, 4)},
		{order: "O6", appid: "wxA", reason: ReasonNotYetExhausted, errcode: 931023, last: rtDay.AddDate(0, 0, 5)},
		// Not decodable: no appid; its order id comes from HeaderDeadKey.
		{order: "O7", reason: ReasonInvalidEvent, last: rtDay.AddDate(0, 0, 5), payload: []byte(`{"order_id":`)},
	}
	cases := map[string]struct {
		f    ReplayFilter
		want []string
	}{
		"all":               {ReplayFilter{}, []string{"O1", "O2", "O3", "O4", "O5", "O6", "O7"}},
		"reason":            {ReplayFilter{Reasons: []Reason{ReasonConfiguration}}, []string{"O1", "O2", "O3"}},
		"errcode":           {ReplayFilter{Errcodes: []int{48001}}, []string{"O1", "O2"}},
		"appid":             {ReplayFilter{AppIDs: []string{"wxA"}}, []string{"O1", "O3", "O4", "O6"}},
		"time range":        {ReplayFilter{Since: rtDay, Until: rtDay.AddDate(0, 0, 3)}, []string{"O1", "O2", "O3"}},
		"order id":          {ReplayFilter{OrderIDs: []string{"O5"}}, []string{"O5"}},
		"undecodable order": {ReplayFilter{OrderIDs: []string{"O7"}}, []string{"O7"}},
		"combined": {ReplayFilter{Reasons: []Reason{ReasonConfiguration}, Errcodes: []int{48001}, AppIDs: []string{"wxA"}},
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
			rep, err := Replay(replayCtx(t), cfg)
			require.NoError(t, err)
			assert.Equal(t, ReplayCounts{Scanned: len(specs), Replayed: len(c.want), SkippedByFilter: len(specs) - len(c.want)},
				rep.ReplayCounts)
			assert.Equal(t, c.want, ordersOf(readTopic(t, brokers, cfg.To)))
		})
	}
}

func TestReplayDryRunChangesNothing(t *testing.T) {
	_, brokers := replayCluster(t)
	writeDeadLetters(t, brokers,
		deadSpec{order: "O1", appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay},
		deadSpec{order: "O2", appid: "wxB", reason: ReasonPermanent, errcode: 40003, last: rtDay},
		deadSpec{order: "O3", appid: "wxA", reason: ReasonConfiguration, errcode: 61007, last: rtDay, replays: 3},
	)
	cfg := rtConfig(brokers)
	cfg.Filter.Reasons = []Reason{ReasonConfiguration}
	cfg.DryRun = true
	var seen []ReplayProgress
	cfg.Progress = func(p ReplayProgress) { seen = append(seen, p) }

	rep, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.True(t, rep.DryRun)
	assert.Equal(t, ReplayCounts{Scanned: 3, Replayed: 1, SkippedByFilter: 1, SkippedOverLimit: 1}, rep.ReplayCounts)
	require.Len(t, seen, 3)
	outcomes := map[string]ReplayOutcome{}
	for _, p := range seen {
		outcomes[p.Event.OrderID] = p.Event.Outcome
		assert.Equal(t, int64(3), p.Total)
	}
	assert.Equal(t, map[string]ReplayOutcome{"O1": WouldReplay, "O2": SkippedByFilter, "O3": SkippedOverLimit}, outcomes)
	assert.Equal(t, 3, seen[2].Scanned, "progress counts accumulate")

	assert.Empty(t, readTopic(t, brokers, rtSource), "a dry run publishes nothing")
	committed := groupOffsets(t, brokers, cfg.Group())
	assert.Equal(t, map[int32]int64{0: -1, 1: -1, 2: -1}, committed, "a dry run commits nothing")

	// The real run does what the dry run said.
	cfg.DryRun, cfg.Progress = false, nil
	real, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, rep.ReplayCounts, real.ReplayCounts)
	assert.Equal(t, []string{"O1"}, ordersOf(readTopic(t, brokers, rtSource)))
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

func TestReplayIntoItsOwnTopicStopsAtTheEndOffsets(t *testing.T) {
	_, brokers := replayCluster(t)
	var specs []deadSpec
	for i := range 12 {
		specs = append(specs, deadSpec{order: fmt.Sprintf("O%02d", i), appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay})
	}
	writeDeadLetters(t, brokers, specs...)
	cfg := rtConfig(brokers)
	cfg.To = rtDead

	rep, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err, "replaying into the topic it reads must terminate")
	assert.Equal(t, ReplayCounts{Scanned: 12, Replayed: 12}, rep.ReplayCounts, "only what was there at the start")
	var total int64
	for _, rg := range rep.Ranges {
		total += rg.End - rg.Start
	}
	assert.Equal(t, int64(12), total)
	assert.Len(t, readTopic(t, brokers, rtDead), 24)

	// The next run with the same group starts where the first stopped and
	// sees only the copies: no longer dead letters, so nothing moves.
	again, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{Scanned: 12, SkippedInvalid: 12}, again.ReplayCounts)
	assert.Len(t, readTopic(t, brokers, rtDead), 24)

	last, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{}, last.ReplayCounts, "nothing new since")
}

func TestReplayLimitEndsAPoisonLoop(t *testing.T) {
	_, brokers := replayCluster(t)
	pub, err := NewKafkaPublisher(KafkaConfig{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	// WeChat refuses the event every time: a cause nobody fixes.
	tr := newScriptedTracer()
	refusals := make([]error, 10)
	for i := range refusals {
		refusals[i] = wechatErr(48001)
	}
	tr.on("SF1", refusals...)
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.InputTopic, c.TracedTopic, c.DeadLetterTopic = rtSource, rtTraced, rtDead
	})

	ev := validEvent("O1", "SF1")
	first := msgOf(t, ev)
	require.NoError(t, h.Handle(first))

	// handleNew runs the handler over the source topic's records from
	// offset seen on, as a consumer of the source topic would.
	seen := 0
	handleNew := func() {
		recs := readTopic(t, brokers, rtSource)
		for _, rec := range recs[seen:] {
			msg, err := NewMarshaler().Unmarshal(rec)
			require.NoError(t, err)
			require.NoError(t, h.Handle(msg))
		}
		seen = len(recs)
	}
	cfg := rtConfig(brokers)
	for round := 1; round <= DefaultMaxReplays; round++ {
		rep, err := Replay(replayCtx(t), cfg)
		require.NoError(t, err)
		require.Equal(t, ReplayCounts{Scanned: 1, Replayed: 1}, rep.ReplayCounts, "round %d", round)
		handleNew()
	}
	dead := readTopic(t, brokers, rtDead)
	require.Len(t, dead, DefaultMaxReplays+1)
	replays, _ := headerOf(dead[len(dead)-1], HeaderReplays)
	assert.Equal(t, fmt.Sprint(DefaultMaxReplays), replays, "the handler kept the counter when it dead-lettered again")

	rep, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{Scanned: 1, SkippedOverLimit: 1}, rep.ReplayCounts)
	require.Len(t, rep.OverLimit, 1)
	assert.Equal(t, first.UUID, rep.OverLimit[0].ID)
	assert.Equal(t, "O1", rep.OverLimit[0].OrderID)
	assert.Equal(t, DefaultMaxReplays, rep.OverLimit[0].Replays)
	assert.Len(t, readTopic(t, brokers, rtSource), DefaultMaxReplays, "the poison event was not sent again")

	// An operator who fixed the cause may allow one more replay of the
	// latest dead letter: a new selection (so a new group), the earlier
	// copies left out by the time of their last failure.
	latest, err := ParseDeadLetter(must(NewMarshaler().Unmarshal(dead[len(dead)-1])))
	require.NoError(t, err)
	cfg.MaxReplays = DefaultMaxReplays + 1
	cfg.Filter = ReplayFilter{OrderIDs: []string{"O1"}, Since: latest.LastFailure}
	rep, err = Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{Scanned: DefaultMaxReplays + 1, Replayed: 1, SkippedByFilter: DefaultMaxReplays}, rep.ReplayCounts)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// manyDeadLetters writes n configuration dead letters, orders O000…, spread
// over the partitions by their keys.
func manyDeadLetters(t *testing.T, brokers []string, n int) map[string]string {
	t.Helper()
	specs := make([]deadSpec, n)
	for i := range specs {
		specs[i] = deadSpec{order: fmt.Sprintf("O%03d", i), appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay}
	}
	return writeDeadLetters(t, brokers, specs...)
}

// copiesByID counts the records of msgs per message UUID.
func copiesByID(t *testing.T, msgs []*sarama.ConsumerMessage) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range msgs {
		id, ok := headerOf(m, kafka.UUIDHeaderKey)
		require.True(t, ok)
		out[id]++
	}
	return out
}

func TestReplayResumesAfterInterruptWithoutDoubles(t *testing.T) {
	_, brokers := replayCluster(t)
	const n = 60
	ids := manyDeadLetters(t, brokers, n)

	ctx, cancel := context.WithCancel(replayCtx(t))
	cfg := rtConfig(brokers)
	cfg.Progress = func(p ReplayProgress) {
		if p.Replayed == n/3 {
			cancel()
		}
	}
	first, err := Replay(ctx, cfg)
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, first.Replayed, n, "interrupted before the end")
	require.GreaterOrEqual(t, first.Replayed, n/3)

	cfg.Progress = nil
	second, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, n, first.Replayed+second.Replayed, "the second run replays exactly the rest")

	copies := copiesByID(t, readTopic(t, brokers, rtSource))
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
	cfg.Progress = func(p ReplayProgress) {
		if p.Replayed == 2*n/3 {
			once.Do(func() { crashed.Store(true); cancel() })
		}
	}
	first, err := Replay(ctx, cfg)
	require.Error(t, err)
	require.Less(t, first.Replayed, n)

	crashed.Store(false)
	cfg.Progress = nil
	second, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)

	copies := copiesByID(t, readTopic(t, brokers, rtSource))
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

func TestPacerSpacesEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPacer(5)
		start := time.Now()
		for range 10 {
			require.NoError(t, p.wait(t.Context()))
		}
		assert.Equal(t, 9*200*time.Millisecond, time.Since(start), "the first at once, then one every 1/rate")

		// An idle pacer does not save up a burst.
		time.Sleep(10 * time.Second)
		start = time.Now()
		require.NoError(t, p.wait(t.Context()))
		require.NoError(t, p.wait(t.Context()))
		assert.Equal(t, 200*time.Millisecond, time.Since(start))

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		assert.ErrorIs(t, p.wait(ctx), context.Canceled)
		assert.NoError(t, (*pacer)(nil).wait(t.Context()), "no rate, no wait")
	})
}

func TestReplayRateCapsRepublishing(t *testing.T) {
	// Under synctest the in-process Kafka's own timers would run in fake
	// time too, so the cap is checked by the pacer test; here the replay
	// must still finish every event with a cap in place.
	_, brokers := replayCluster(t)
	manyDeadLetters(t, brokers, 5)
	cfg := rtConfig(brokers)
	cfg.Rate = 1000
	rep, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, 5, rep.Replayed)
}

func TestReplayConfigValidate(t *testing.T) {
	ok := ReplayConfig{Kafka: KafkaConfig{Brokers: []string{"127.0.0.1:9092"}}}
	require.NoError(t, ok.Validate())
	cases := map[string]func(*ReplayConfig){
		"no brokers":        func(c *ReplayConfig) { c.Kafka.Brokers = nil },
		"negative rate":     func(c *ReplayConfig) { c.Rate = -1 },
		"negative limit":    func(c *ReplayConfig) { c.MaxReplays = -1 },
		"negative batch":    func(c *ReplayConfig) { c.Batch = -1 },
		"since after until": func(c *ReplayConfig) { c.Filter.Since, c.Filter.Until = rtDay.AddDate(0, 0, 1), rtDay },
		"empty time range":  func(c *ReplayConfig) { c.Filter.Since, c.Filter.Until = rtDay, rtDay },
		"misspelt reason":   func(c *ReplayConfig) { c.Filter.Reasons = []Reason{"configuraton"} },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			c := ok
			mod(&c)
			assert.Error(t, c.Validate())
			_, err := Replay(t.Context(), c)
			assert.Error(t, err, "Replay validates before it connects")
		})
	}
}

func TestReplayGroupNamesTheSelection(t *testing.T) {
	a := ReplayConfig{Filter: ReplayFilter{Reasons: []Reason{ReasonConfiguration, ReasonPermanent}, Errcodes: []int{48001, 61007}}}
	b := ReplayConfig{Filter: ReplayFilter{Reasons: []Reason{ReasonPermanent, ReasonConfiguration}, Errcodes: []int{61007, 48001}}}
	assert.Equal(t, a.Group(), b.Group(), "the order of a list does not matter")
	assert.Regexp(t, `^waybill-replay-[0-9a-f]{12}$`, a.Group())

	others := []ReplayConfig{
		{},
		{Topic: "other.dead"},
		{To: "order.shipped.v2"},
		{Filter: ReplayFilter{AppIDs: []string{"wxA"}}},
		{Filter: ReplayFilter{OrderIDs: []string{"wxA"}}},
		{Filter: ReplayFilter{Since: rtDay}},
		{Filter: ReplayFilter{Until: rtDay}},
	}
	seen := map[string]int{a.Group(): -1}
	for i, c := range others {
		g := c.Group()
		prev, dup := seen[g]
		assert.False(t, dup, "configs %d and %d share group %s", i, prev, g)
		seen[g] = i
	}
	assert.Equal(t, ReplayConfig{Topic: DefaultDeadLetterTopic}.Group(), ReplayConfig{}.Group())
	assert.Equal(t, "mine", (&ReplayConfig{Kafka: KafkaConfig{ConsumerGroup: "mine"}}).Group())
}

func TestReplayNeverCreatesTopics(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(3, rtSource, rtDead))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()
	writeDeadLetters(t, brokers, deadSpec{order: "O1", appid: "wxA", reason: ReasonPermanent, errcode: 40003, last: rtDay})

	cfg := rtConfig(brokers)
	cfg.Topic = "no.such.topic"
	_, err = Replay(replayCtx(t), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no.such.topic")
	assert.ErrorIs(t, err, sarama.ErrUnknownTopicOrPartition)

	cfg = rtConfig(brokers)
	cfg.To = "misspelt.topic"
	rep, err := Replay(replayCtx(t), cfg)
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
	reports := make([]*ReplayReport, 2)
	errs := make([]error, 2)
	for i := range reports {
		wg.Go(func() { reports[i], errs[i] = Replay(replayCtx(t), cfg) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])

	copies := copiesByID(t, readTopic(t, brokers, rtSource))
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
	cfg.Progress = func(p ReplayProgress) {
		if p.Replayed == n/2 {
			refuse.Store(true)
		}
	}
	first, err := Replay(replayCtx(t), cfg)
	require.Error(t, err)
	assert.ErrorIs(t, err, sarama.ErrTopicAuthorizationFailed)
	assert.Contains(t, err.Error(), "republish")
	require.Less(t, first.Replayed, n)

	refuse.Store(false)
	cfg.Progress = nil
	second, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, n, first.Replayed+second.Replayed, "the failed event was not marked, so the rerun sends it")

	copies := copiesByID(t, readTopic(t, brokers, rtSource))
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
		deadSpec{order: "O1", appid: "wxA", reason: ReasonConfiguration, errcode: 48001, last: rtDay},
		deadSpec{order: "O2", reason: ReasonInvalidEvent, last: rtDay, payload: []byte(`{"order_id":"` + strings.Repeat("x", 10_000) + `"}`)},
	)
	cfg := rtConfig(brokers)
	cfg.To = "to.reduced"
	rep, err := Replay(replayCtx(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, ReplayCounts{Scanned: 2, Replayed: 1, SkippedInvalid: 1}, rep.ReplayCounts)
	assert.Equal(t, []string{"O1"}, ordersOf(readTopic(t, brokers, cfg.To)))
}
