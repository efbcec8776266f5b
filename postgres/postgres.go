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
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
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

// schema is watermill-sql's PostgreSQL queue schema, with bytes for payloads,
// a column for the due time, and its own select: one row per transaction,
// FOR UPDATE SKIP LOCKED, READ COMMITTED, rows not yet due skipped.
//
// One row: watermill-sql acknowledges every row of a batch it selected once
// one of them is acked, even those it never handed out when the batch was cut
// short (closing, an ack deadline), which would lose them. SKIP LOCKED lets
// concurrent subscribers take different rows instead of queueing on one
// (and failing serialization under REPEATABLE READ).
//
// The due time has a column of its own, filled from Watermill's delay
// metadata as the row is inserted, because the poll must never fail: read
// from the JSON metadata in SQL, one header holding a NUL ("\u0000" cannot
// be text) or a due time that is not a time would make every poll of the
// table fail, and stall it for good.
type schema struct {
	wmsql.PostgreSQLQueueSchema
}

func newSchema() schema {
	return schema{wmsql.PostgreSQLQueueSchema{SubscribeBatchSize: 1}}
}

// SchemaInitializingQueries creates the table, unless it exists, in one
// statement that takes no lock on an existing table: every process runs it
// at start and on a topic's first publish, and DDL that waited behind the
// transactions holding rows (a delivery, an application's outbox) would
// hold up every query on the table behind it. The offset is a BIGSERIAL:
// watermill-sql's SERIAL runs out after 2^31 events.
func (s schema) SchemaInitializingQueries(params wmsql.SchemaInitializingQueriesParams) ([]wmsql.Query, error) {
	if err := checkTopic(params.Topic); err != nil {
		return nil, err
	}
	table := s.MessagesTable(params.Topic)
	// The poll walks unacked rows in offset order; with acked rows kept
	// (KeepAcked) the partial index keeps it from walking those too.
	index := `"` + strings.Trim(table, `"`) + `_unacked_idx"`
	return []wmsql.Query{{Query: `DO $waybill$ BEGIN
	IF to_regclass('` + table + `') IS NULL THEN
		-- Concurrent CREATE TABLE IF NOT EXISTS of one name can fail on pg_type.
		PERFORM pg_advisory_xact_lock(` + fmt.Sprint(ddlLock) + `);
		CREATE TABLE IF NOT EXISTS ` + table + ` (
			"offset" BIGSERIAL PRIMARY KEY,
			"uuid" VARCHAR(36) NOT NULL,
			"payload" BYTEA DEFAULT NULL,
			"metadata" JSON DEFAULT NULL,
			"acked" BOOLEAN NOT NULL DEFAULT FALSE,
			"created_at" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
			"delayed_until" TIMESTAMP WITH TIME ZONE DEFAULT NULL
		);
		CREATE INDEX IF NOT EXISTS ` + index + ` ON ` + table + ` ("offset") WHERE acked = false;
	END IF;
END $waybill$`}}, nil
}

// ddlLock is the advisory lock key of table creation.
const ddlLock = 0x77617962696c6c // "waybill"

func (s schema) InsertQuery(params wmsql.InsertQueryParams) (wmsql.Query, error) {
	var b strings.Builder
	args := make([]any, 0, 4*len(params.Msgs))
	for i, msg := range params.Msgs {
		md, err := json.Marshal(msg.Metadata)
		if err != nil {
			return wmsql.Query{}, fmt.Errorf("metadata of %s: %w", msg.UUID, err)
		}
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "($%d,$%d,$%d,$%d)", 4*i+1, 4*i+2, 4*i+3, 4*i+4)
		args = append(args, msg.UUID, []byte(msg.Payload), md, dueOf(msg))
	}
	return wmsql.Query{Query: `INSERT INTO ` + s.MessagesTable(params.Topic) + ` (uuid, payload, metadata, delayed_until) VALUES ` + b.String(), Args: args}, nil
}

// dueOf reads Watermill's delay metadata: nil (deliver at once) when there
// is none, or when it is not a time, which no one can honour.
func dueOf(msg *message.Message) any {
	v := msg.Metadata.Get(delay.DelayedUntilKey)
	if v == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return nil
	}
	return t
}

func (s schema) SelectQuery(params wmsql.SelectQueryParams) (wmsql.Query, error) {
	if params.ConsumerGroup != "" {
		return wmsql.Query{}, errors.New("postgres: consumer groups are not supported by the queue schema")
	}
	return wmsql.Query{Query: `SELECT "offset", uuid, payload, metadata FROM ` + s.MessagesTable(params.Topic) +
		` WHERE acked = false AND (delayed_until IS NULL OR delayed_until <= NOW())` +
		` ORDER BY "offset" ASC LIMIT 1 FOR UPDATE SKIP LOCKED`}, nil
}

func (s schema) SubscribeIsolationLevel() stdsql.IsolationLevel { return stdsql.LevelReadCommitted }

// validTopic is watermill-sql's rule for topic names, which become table
// names inside quotes, less the $ that could end the dollar quote of
// table creation.
var validTopic = regexp.MustCompile(`^[A-Za-z0-9\-:._]+$`)

// Table is the quoted name of the table that holds topic, for your own
// queries (counting a backlog, say). topic must be a valid topic name:
// letters, digits and -:._ only, as every function here checks.
func Table(topic string) string { return newSchema().MessagesTable(topic) }

func checkTopic(topic string) error {
	if !validTopic.MatchString(topic) {
		return fmt.Errorf("postgres: topic %q: only letters, digits and -:._ may name a table", topic)
	}
	return nil
}

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
