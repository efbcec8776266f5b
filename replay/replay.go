package replay

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/internal/wait"
)

// Run reads the dead-letter topic cfg.Topic and republishes the events
// cfg.Filter selects to the topic they were consumed from (or cfg.To), as
// they were before they died: same payload, same Kafka key, same message
// UUID, the original headers without the deadletter.HeaderDead* ones, and
// deadletter.HeaderReplays one higher. An event already replayed
// cfg.MaxReplays times is skipped and reported instead.
//
// Run records the end offset of every partition when it starts and stops
// once it has read up to them: it never chases records written after it
// started, its own output included, so replaying into the dead-letter topic
// itself terminates. A partition is done when the record just below its end
// offset has been read, so the topic must be written without transactions,
// as waybill writes it: a transaction marker there is never delivered, and
// the replay would wait for it until ctx ends.
//
// Guarantee: an event is republished (acks=all) before its record's offset is
// marked; the consumer group's position is committed every cfg.Batch records
// per partition, when a partition is done and when the replay stops. So an
// interrupted replay, run again with the same configuration (the same
// group), loses nothing. If it stopped cleanly (ctx cancelled, a publish
// failed) it republishes nothing twice; if the process died or a commit
// failed, it republishes again at most the records handled since the last
// successful commit: cfg.Batch per partition, the in-flight batch.
//
// Run does not change the dead-letter topic: replayed events stay in it,
// and only the group's position says they were replayed. A new selection
// (another group) that covers them sends them again; a waybill.Handler with
// waybill.Config.TraceStore set answers an event it already traced without calling
// WeChat.
//
// The report is returned whenever reading began, with an error too when the
// replay was interrupted (wrapping ctx.Err()) or failed; its counts then say
// what was done.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sc, err := cfg.Kafka.ProducerConfig(func(sc *sarama.Config) {
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		sc.Consumer.Offsets.AutoCommit.Enable = false
		sc.Consumer.Return.Errors = true
		// Run reads a bounded range and then stops: a short fetch wait
		// lets it notice the end, and shut down, without idling in long
		// polls.
		sc.Consumer.MaxWaitTime = 50 * time.Millisecond
		// Reading a misspelt -topic, or sending to a misspelt -to, must
		// fail, not create the topic on a broker that auto-creates.
		sc.Metadata.AllowAutoTopicCreation = false
	})
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return nil, cfg.Kafka.Explain("replay: kafka client", err)
	}
	defer client.Close()

	r := &replayer{cfg: cfg, client: client, pace: newPacer(cfg.Rate), done: map[int32]bool{}}
	r.report = Report{Group: cfg.Kafka.ConsumerGroup, DryRun: cfg.DryRun, ByReason: map[deadletter.Reason]Counts{}}
	if err := r.plan(); err != nil {
		return nil, err
	}
	if cfg.DryRun {
		err = r.scan(ctx)
	} else {
		err = r.replay(ctx)
	}
	report := r.report
	return &report, err
}

// replayer is the state of one Run call.
type replayer struct {
	cfg    Config
	client sarama.Client
	pace   *pacer
	// ranges and total are fixed by plan.
	ranges map[int32]Range
	total  int64

	producer sarama.SyncProducer // nil in a dry run
	cancel   context.CancelFunc  // ends the group session once every partition is done

	mu       sync.Mutex
	report   Report
	done     map[int32]bool
	failure  error // first publish failure
	groupErr error // first error the consumer group reported
}

// plan records the end offset of every partition and the group's start
// positions.
func (r *replayer) plan() error {
	topic := r.cfg.Topic
	parts, err := r.client.Partitions(topic)
	if err != nil {
		return fmt.Errorf("replay: partitions of the dead-letter topic: %w", err) // err names the topic
	}
	committed, err := r.committed(parts)
	if err != nil {
		return err
	}
	r.ranges = make(map[int32]Range, len(parts))
	for _, p := range parts {
		oldest, err := r.client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return fmt.Errorf("replay: oldest offset of %s/%d: %w", topic, p, err)
		}
		end, err := r.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return fmt.Errorf("replay: end offset of %s/%d: %w", topic, p, err)
		}
		// A position below the oldest record (retention deleted it) restarts
		// from the oldest record, as the consumer group does.
		start := max(committed[p], oldest)
		rg := Range{Partition: p, Start: start, End: end}
		r.ranges[p] = rg
		r.report.Ranges = append(r.report.Ranges, rg)
		if start >= end {
			r.done[p] = true
		} else {
			r.total += end - start
		}
	}
	sort.Slice(r.report.Ranges, func(i, j int) bool { return r.report.Ranges[i].Partition < r.report.Ranges[j].Partition })
	return nil
}

// committed returns the group's committed offset of each partition; -1 for
// none. It only reads.
func (r *replayer) committed(parts []int32) (map[int32]int64, error) {
	// The admin shares r.client; closing the client releases it.
	admin, err := sarama.NewClusterAdminFromClient(r.client)
	if err != nil {
		return nil, fmt.Errorf("replay: kafka admin: %w", err)
	}
	out := make(map[int32]int64, len(parts))
	for _, p := range parts {
		out[p] = -1
	}
	resp, err := admin.ListConsumerGroupOffsets(r.cfg.Kafka.ConsumerGroup, map[string][]int32{r.cfg.Topic: parts})
	if err == nil && resp.Err != sarama.ErrNoError {
		err = resp.Err
	}
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return out, nil // a group that never committed (some brokers say so)
	}
	if err != nil {
		return nil, fmt.Errorf("replay: committed offsets of group %s: %w", r.cfg.Kafka.ConsumerGroup, err)
	}
	for _, p := range parts {
		if b := resp.GetBlock(r.cfg.Topic, p); b != nil && b.Err == sarama.ErrNoError {
			out[p] = b.Offset
		}
	}
	return out, nil
}

// scan is the dry run: plain partition consumers from the start positions,
// one partition after the other, so the output is in partition order.
func (r *replayer) scan(ctx context.Context) error {
	consumer, err := sarama.NewConsumerFromClient(r.client)
	if err != nil {
		return fmt.Errorf("replay: kafka consumer: %w", err)
	}
	defer consumer.Close()
	for _, rg := range r.report.Ranges {
		if rg.Start >= rg.End {
			continue
		}
		pc, err := consumer.ConsumePartition(r.cfg.Topic, rg.Partition, rg.Start)
		if err != nil {
			return fmt.Errorf("replay: read %s/%d: %w", r.cfg.Topic, rg.Partition, err)
		}
		err = r.scanPartition(ctx, pc, rg.End)
		pc.AsyncClose()
		for range pc.Messages() {
		}
		for range pc.Errors() {
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *replayer) scanPartition(ctx context.Context, pc sarama.PartitionConsumer, end int64) error {
	for {
		select {
		case m := <-pc.Messages():
			if m.Offset >= end {
				return nil
			}
			_, ev := r.inspect(m)
			r.record(ev)
			if m.Offset+1 >= end {
				return nil
			}
		case err := <-pc.Errors():
			return fmt.Errorf("replay: read %s/%d: %w", r.cfg.Topic, err.Partition, err.Err)
		case <-ctx.Done():
			return fmt.Errorf("replay interrupted: %w", ctx.Err())
		}
	}
}

// replay joins the consumer group and republishes until every partition
// reached its end offset.
func (r *replayer) replay(ctx context.Context) error {
	if r.allDone() {
		return nil
	}
	producer, err := sarama.NewSyncProducerFromClient(r.client)
	if err != nil {
		return fmt.Errorf("replay: kafka producer: %w", err)
	}
	defer producer.Close()
	r.producer = producer
	group, err := sarama.NewConsumerGroupFromClient(r.cfg.Kafka.ConsumerGroup, r.client)
	if err != nil {
		return fmt.Errorf("replay: consumer group %s: %w", r.cfg.Kafka.ConsumerGroup, err)
	}
	errsDone := make(chan struct{})
	go func() {
		defer close(errsDone)
		for err := range group.Errors() {
			r.mu.Lock()
			if r.groupErr == nil && !errors.Is(err, context.Canceled) {
				r.groupErr = err
			}
			r.mu.Unlock()
		}
	}()
	defer func() { <-errsDone }()
	defer group.Close()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.cancel = cancel
	topics := []string{r.cfg.Topic}
	for {
		err := group.Consume(runCtx, topics, r)
		if f := r.failed(); f != nil {
			return f
		}
		if r.allDone() {
			return r.commitError()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("replay interrupted: %w", ctx.Err())
		}
		if err != nil {
			return fmt.Errorf("replay: consume %s: %w", r.cfg.Topic, err)
		}
		// The session ended for a rebalance: another member of the group
		// may have finished partitions this one did not hold.
		if err := r.refreshDone(); err != nil {
			return err
		}
	}
}

// Setup implements sarama.ConsumerGroupHandler.
func (r *replayer) Setup(sess sarama.ConsumerGroupSession) error {
	go r.watch(sess.Context())
	return nil
}

// watchEvery is how often a member whose partitions are done looks at the
// group's committed offsets for the partitions other members hold.
const watchEvery = time.Second

// watch ends the session once every partition is done, counting those that
// other members of the group finished (their committed position reached the
// end offset), so that several replays in one group all stop.
// ctx is the session's, which r.cancel ends.
func (r *replayer) watch(ctx context.Context) {
	wait.Every(ctx, watchEvery, func() {
		if err := r.refreshDone(); err == nil && r.allDone() {
			r.cancel()
		}
	})
}

// Cleanup implements sarama.ConsumerGroupHandler.
func (r *replayer) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim implements sarama.ConsumerGroupHandler: it replays one
// partition up to its end offset, then holds the claim until every partition
// is done, so that the session does not end early.
func (r *replayer) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	p := claim.Partition()
	if rg, known := r.ranges[p]; known && !r.isDone(p) {
		// InitialOffset is negative (OffsetOldest) when the group has no
		// position yet.
		reached := claim.InitialOffset() >= rg.End
		if !reached {
			var err error
			if reached, err = r.consumePartition(sess, claim, rg.End); err != nil {
				return err
			}
		}
		if reached {
			r.finish(p)
		}
	}
	<-sess.Context().Done()
	return nil
}

// consumePartition handles a claim's records below end. It reports whether it
// reached end; it stops early, with no error, when the session ends, and with
// the error when a publish failed.
func (r *replayer) consumePartition(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim, end int64) (reached bool, err error) {
	marked := 0
	defer func() {
		if marked > 0 {
			sess.Commit()
		}
	}()
	for {
		select {
		case m, ok := <-claim.Messages():
			if !ok {
				return false, nil
			}
			if m.Offset >= end {
				return true, nil
			}
			msg, ev := r.inspect(m)
			if ev.Outcome == Replayed {
				if err := r.pace.wait(sess.Context()); err != nil {
					return false, nil // the session ends; the record stays unmarked
				}
				if err := r.republish(m, msg, &ev); err != nil {
					r.fail(err)
					return false, err
				}
			}
			sess.MarkMessage(m, "")
			r.record(ev)
			if marked++; marked >= r.cfg.Batch {
				sess.Commit()
				marked = 0
			}
			if m.Offset+1 >= end {
				return true, nil
			}
		case <-sess.Context().Done():
			return false, nil
		}
	}
}

// inspect decodes a record and decides its outcome.
func (r *replayer) inspect(m *sarama.ConsumerMessage) (*message.Message, Event) {
	msg, _ := wmkafka.DefaultMarshaler{}.Unmarshal(m) // never fails
	ev := Event{ID: msg.UUID, Partition: m.Partition, Offset: m.Offset, Key: string(m.Key),
		OrderID: msg.Metadata.Get(deadletter.HeaderDeadKey), To: r.cfg.To}
	if e, err := r.cfg.Decode(msg); err == nil && e != nil {
		ev.AppID = e.AppID
		if e.OrderID != "" {
			ev.OrderID = e.OrderID
		}
	}
	d, err := deadletter.Parse(msg)
	if err != nil {
		ev.Outcome, ev.Problem = SkippedInvalid, err.Error()
		return msg, ev
	}
	ev.Dead = d
	if ev.To == "" {
		ev.To = d.SourceTopic
	}
	if s := msg.Metadata.Get(deadletter.HeaderReplays); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			ev.Outcome, ev.Problem = SkippedInvalid, fmt.Sprintf("header %s: %q is not a count", deadletter.HeaderReplays, s)
			return msg, ev
		}
		ev.Replays = n
	}
	switch {
	case !r.cfg.Filter.Match(&ev):
		ev.Outcome = SkippedByFilter
	case ev.Replays >= r.cfg.MaxReplays:
		ev.Outcome = SkippedOverLimit
	case ev.To == "":
		ev.Outcome, ev.Problem = SkippedInvalid, fmt.Sprintf("no %s header and no destination topic given", deadletter.HeaderDeadSourceTopic)
	case d.Dropped != "":
		// Replaying what is left would dead-letter an empty event; the
		// original is at its source offset.
		ev.Outcome, ev.Problem = SkippedInvalid, fmt.Sprintf("reduced dead letter (dropped %s): replay the original from %s/%d/%d",
			d.Dropped, d.SourceTopic, d.SourcePartition, d.SourceOffset)
	case r.cfg.DryRun:
		ev.Outcome = WouldReplay
	default:
		ev.Outcome = Replayed
	}
	return msg, ev
}

// republish sends the event as it was before it died, with a fresh attempt
// history and deadletter.HeaderReplays incremented, and waits for all
// in-sync replicas.
func (r *replayer) republish(m *sarama.ConsumerMessage, msg *message.Message, ev *Event) error {
	md := deadletter.ReplayMetadata(msg)
	md.Set(deadletter.HeaderReplays, strconv.Itoa(ev.Replays+1))
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	headers := make([]sarama.RecordHeader, 0, len(keys)+1)
	if msg.UUID != "" {
		headers = append(headers, sarama.RecordHeader{Key: []byte(wmkafka.UUIDHeaderKey), Value: []byte(msg.UUID)})
	}
	for _, k := range keys {
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(md[k])})
	}
	pm := &sarama.ProducerMessage{Topic: ev.To, Value: sarama.ByteEncoder(m.Value), Headers: headers}
	if m.Key != nil {
		pm.Key = sarama.ByteEncoder(m.Key)
	}
	if _, _, err := r.producer.SendMessage(pm); err != nil {
		return fmt.Errorf("replay: republish %s (%s/%d@%d) to %s: %w", ev.ID, r.cfg.Topic, ev.Partition, ev.Offset, ev.To, err)
	}
	return nil
}

// record counts ev and reports progress.
func (r *replayer) record(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.add(ev.Outcome)
	var reason deadletter.Reason
	if ev.Dead != nil {
		reason = ev.Dead.Reason
	}
	c := r.report.ByReason[reason]
	c.add(ev.Outcome)
	r.report.ByReason[reason] = c
	if ev.Outcome == SkippedOverLimit {
		r.report.OverLimit = append(r.report.OverLimit, ev)
	}
	if r.cfg.Progress != nil {
		r.cfg.Progress(Progress{Counts: r.report.Counts, Total: r.total, Event: ev})
	}
}

// finish marks partition p done and ends the session when all are.
func (r *replayer) finish(p int32) {
	r.mu.Lock()
	r.done[p] = true
	all := len(r.done) == len(r.ranges)
	r.mu.Unlock()
	if all {
		r.cancel()
	}
}

func (r *replayer) isDone(p int32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done[p]
}

func (r *replayer) allDone() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.done) == len(r.ranges)
}

// refreshDone marks done the partitions whose committed position reached
// their end offset, whoever committed it.
func (r *replayer) refreshDone() error {
	parts := make([]int32, 0, len(r.ranges))
	for p := range r.ranges {
		parts = append(parts, p)
	}
	committed, err := r.committed(parts)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, rg := range r.ranges {
		if committed[p] >= rg.End {
			r.done[p] = true
		}
	}
	return nil
}

func (r *replayer) fail(err error) {
	r.mu.Lock()
	if r.failure == nil {
		r.failure = err
	}
	r.mu.Unlock()
	r.cancel()
}

func (r *replayer) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failure
}

func (r *replayer) commitError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.groupErr != nil {
		return fmt.Errorf("replay: events republished, but the consumer position may not be committed (a rerun republishes those since the last commit): %w", r.groupErr)
	}
	return nil
}
