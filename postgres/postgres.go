// Package postgres runs waybill on PostgreSQL through watermill-sql, for an
// event-driven monolith with one database and no Kafka: topics are tables,
// the application publishes order.shipped inside its own transaction (an
// outbox with nothing extra to poll: PublishInTx), and a message can be held
// back until a time with Watermill's delay metadata, which the Handler's
// parking uses (waybill.NativeDelay) instead of delay topics.
//
// Every topic is a queue table "watermill_<topic>" of watermill-sql's
// PostgreSQL queue schema, with the payload as bytes (any encoding, no JSON
// check to fail on). A Subscriber takes one row at a time in its own
// transaction, locked FOR UPDATE SKIP LOCKED: the row is acknowledged (and
// deleted) in the transaction that took it, after the handler's outcome was
// published, and a crash rolls the transaction back so the row is taken
// again. Subscribers in several processes share a topic: each row goes to
// one of them at a time. Rows whose delay has not passed are skipped, so a
// parked event never holds back the events behind it.
//
// Guarantees: at-least-once, like Kafka. A message is deleted only when its
// handler acked it; a nack, a handler that outlives Config.AckDeadline, a
// closed subscriber or a crash gives the row back. Order: rows are taken
// oldest first, but with Concurrency above 1, or several processes, two
// messages of one order can be handled at once; the Handler's trace store
// makes duplicates of one waybill cost one WeChat call either way.
//
// The root package never imports this one; cmd/ and your programs do.
package postgres

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Config configures the subscribers and publishers of this package. The zero
// value means the defaults documented on each field.
type Config struct {
	// Logger: nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// PollInterval is how long an idle subscriber waits before it looks for
	// a row again: the most a new event waits, and how late a delayed one
	// may come back. Zero means 1 s.
	PollInterval time.Duration
	// AckDeadline bounds one delivery: a message neither acked nor nacked by
	// then is given back, and its context cancelled. Keep it above the
	// Handler's MaxWaitInPlace (25 s by default) plus a publish, or a slow
	// delivery is handled twice. Zero means 2 min.
	AckDeadline time.Duration
	// NackResendSleep is how long a nacked message waits before it is
	// handed out again; its row stays locked meanwhile. Zero means 1 s.
	NackResendSleep time.Duration
	// Concurrency is how many messages of one topic a Subscriber hands out
	// at once, each in its own transaction (and database connection). Zero
	// means 1: one message at a time, oldest first.
	Concurrency int
	// KeepAcked marks acknowledged rows acked instead of deleting them, for
	// an audit trail; something else must then delete them, or every poll
	// scans a table that only grows.
	KeepAcked bool
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.AckDeadline == 0 {
		c.AckDeadline = 2 * time.Minute
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = time.Second
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
}

// Validate reports a configuration that cannot work. Zero fields mean their
// defaults.
func (c Config) Validate() error {
	var errs []error
	for name, d := range map[string]time.Duration{"PollInterval": c.PollInterval, "AckDeadline": c.AckDeadline, "NackResendSleep": c.NackResendSleep} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("postgres: %s %s must not be negative", name, d))
		}
	}
	if c.Concurrency < 0 || c.Concurrency > 256 {
		errs = append(errs, fmt.Errorf("postgres: Concurrency %d must be between 1 and 256", c.Concurrency))
	}
	return errors.Join(errs...)
}

// schema is watermill-sql's PostgreSQL queue schema with bytes for payloads,
// one row per transaction, SKIP LOCKED, READ COMMITTED and the delay filter.
//
// One row: watermill-sql acknowledges every row of a batch it selected once
// one of them is acked, even those it never handed out when the batch was cut
// short (closing, an ack deadline), which would lose them. SKIP LOCKED lets
// concurrent subscribers take different rows instead of queueing on one
// (and failing serialization under REPEATABLE READ).
type schema struct {
	wmsql.PostgreSQLQueueSchema
}

func newSchema() schema {
	return schema{wmsql.PostgreSQLQueueSchema{
		GeneratePayloadType: func(string) string { return "BYTEA" },
		SubscribeBatchSize:  1,
	}}
}

// dueClause selects rows without a delay or whose delay has passed by the
// database's clock.
var dueClause = fmt.Sprintf(`((metadata->>'%[1]s') IS NULL OR (metadata->>'%[1]s')::timestamptz <= NOW())`, delay.DelayedUntilKey)

func (s schema) SelectQuery(params wmsql.SelectQueryParams) (wmsql.Query, error) {
	if params.ConsumerGroup != "" {
		return wmsql.Query{}, errors.New("postgres: consumer groups are not supported by the queue schema")
	}
	return wmsql.Query{Query: `SELECT "offset", uuid, payload, metadata FROM ` + s.MessagesTable(params.Topic) +
		` WHERE acked = false AND ` + dueClause +
		` ORDER BY "offset" ASC LIMIT 1 FOR UPDATE SKIP LOCKED`}, nil
}

func (s schema) SubscribeIsolationLevel() stdsql.IsolationLevel { return stdsql.LevelReadCommitted }

func (s schema) SchemaInitializingQueries(params wmsql.SchemaInitializingQueriesParams) ([]wmsql.Query, error) {
	queries, err := s.PostgreSQLQueueSchema.SchemaInitializingQueries(params)
	if err != nil {
		return nil, err
	}
	table := s.MessagesTable(params.Topic)
	// The poll walks unacked rows in offset order; with acked rows kept
	// (KeepAcked) the partial index keeps it from walking those too.
	index := `"` + strings.ReplaceAll(strings.Trim(table, `"`), `"`, ``) + `_unacked_idx"`
	return append(queries, wmsql.Query{Query: `CREATE INDEX IF NOT EXISTS ` + index + ` ON ` + table + ` ("offset") WHERE acked = false`}), nil
}

// Table is the table that holds topic.
func Table(topic string) string { return newSchema().MessagesTable(topic) }

// NewPublisher returns a publisher that inserts messages into their topic's
// table through db, creating the table on a topic's first publish. Messages
// are visible to subscribers once inserted; for the outbox, publish inside
// the application's transaction with PublishInTx instead.
func NewPublisher(db *stdsql.DB, cfg Config) (message.Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return wmsql.NewPublisher(wmsql.BeginnerFromStdSQL(db), wmsql.PublisherConfig{
		SchemaAdapter:        newSchema(),
		AutoInitializeSchema: true,
	}, cfg.Logger)
}

// PublishInTx inserts msgs into topic's table inside tx, the application's
// own transaction: they are delivered if and only if tx commits, together
// with whatever else tx wrote. The table must exist (InitializeTopics, or a
// Subscriber or NewPublisher that used the topic before): creating it
// inside tx could commit it implicitly.
func PublishInTx(ctx context.Context, tx *stdsql.Tx, topic string, msgs ...*message.Message) error {
	pub, err := wmsql.NewPublisher(wmsql.TxFromStdSQL(tx), wmsql.PublisherConfig{SchemaAdapter: newSchema()}, nil)
	if err != nil {
		return fmt.Errorf("postgres publish %s in tx: %w", topic, err)
	}
	// watermill-sql runs the insert in the first message's context.
	withCtx := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		withCtx[i] = m.Copy()
		withCtx[i].SetContext(ctx)
	}
	if err := pub.Publish(topic, withCtx...); err != nil {
		return fmt.Errorf("postgres publish %s in tx: %w", topic, err)
	}
	return nil
}

// InitializeTopics creates the tables of topics if they do not exist. Run it
// once at start for the topics the application publishes with PublishInTx.
// Safe to run from several processes at once.
func InitializeTopics(ctx context.Context, db *stdsql.DB, topics ...string) error {
	sub, err := wmsql.NewSubscriber(wmsql.BeginnerFromStdSQL(db), subscriberConfig(Config{}), nil)
	if err != nil {
		return fmt.Errorf("postgres initialize topics: %w", err)
	}
	defer sub.Close()
	for _, topic := range topics {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("postgres initialize %s: %w", topic, err)
		}
		if err := sub.SubscribeInitialize(topic); err != nil {
			return fmt.Errorf("postgres initialize %s: %w", topic, err)
		}
	}
	return nil
}

func subscriberConfig(cfg Config) wmsql.SubscriberConfig {
	cfg.setDefaults()
	deadline := cfg.AckDeadline
	return wmsql.SubscriberConfig{
		SchemaAdapter:    newSchema(),
		OffsetsAdapter:   wmsql.PostgreSQLQueueOffsetsAdapter{DeleteOnAck: !cfg.KeepAcked},
		InitializeSchema: true,
		AckDeadline:      &deadline,
		PollInterval:     cfg.PollInterval,
		ResendInterval:   cfg.NackResendSleep,
		RetryInterval:    cfg.PollInterval,
	}
}

// Subscriber hands out the rows of a topic; see the package documentation
// for when a row is acknowledged and what a crash redelivers.
type Subscriber struct {
	cfg  Config
	subs []*wmsql.Subscriber

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NewSubscriber returns a subscriber on db. Each Subscribe creates its
// topic's table if needed and hands out up to Config.Concurrency messages at
// once; db's pool needs that many connections free for it.
func NewSubscriber(db *stdsql.DB, cfg Config) (*Subscriber, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Subscriber{cfg: cfg}
	for range cfg.Concurrency {
		sub, err := wmsql.NewSubscriber(wmsql.BeginnerFromStdSQL(db), subscriberConfig(cfg), cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("postgres subscriber: %w", err)
		}
		s.subs = append(s.subs, sub)
	}
	return s, nil
}

// Subscribe returns the messages of topic until ctx ends or the subscriber
// is closed; then the channel is closed.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	ins := make([]<-chan *message.Message, 0, len(s.subs))
	for _, sub := range s.subs {
		in, err := sub.Subscribe(ctx, topic)
		if err != nil {
			return nil, fmt.Errorf("postgres subscribe %s: %w", topic, err)
		}
		ins = append(ins, in)
	}
	var fan sync.WaitGroup
	for _, in := range ins {
		fan.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer fan.Done()
			// Each inner subscriber waits for its message's ack before it
			// takes the next row, so forwarding without a buffer keeps
			// Concurrency the bound.
			for msg := range in {
				select {
				case out <- msg:
				case <-ctx.Done():
					// Not handed out: the inner subscriber gives the
					// row back when it sees ctx end.
				}
			}
		}()
	}
	go func() { fan.Wait(); close(out) }()
	return out, nil
}

// Close stops every subscription and waits for them: rows handed out and not
// yet acked are given back.
func (s *Subscriber) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		for _, sub := range s.subs {
			errs = append(errs, sub.Close())
		}
	})
	s.wg.Wait()
	return errors.Join(errs...)
}
