// Package postgres runs waybill on PostgreSQL through watermill-sql, for an
// event-driven monolith with one database and no Kafka: topics are tables,
// the application publishes order.shipped inside its own transaction (an
// outbox with nothing extra to poll: PublishInTx), and a message can be held
// back until a time with Watermill's delay metadata, which the Handler's
// parking uses (waybill.NativeDelay) instead of delay topics.
//
// Every topic is a queue table "watermill_<topic>" (watermill-sql's
// PostgreSQL queue schema, with the payload as bytes and a ready_at column).
// A Subscriber takes one row at a time in its own transaction, locked FOR
// UPDATE SKIP LOCKED, and deletes it in that transaction when the handler
// acks; the Handler's outcome, published with the input's context through
// NewPublisher, is inserted in the same transaction. A crash rolls it all
// back, and the row is taken again. Subscribers in several processes share a
// topic: each row goes to one of them at a time.
//
// Order: rows are handed out by the time they became ready, then by offset:
// a new row when it was inserted, a delayed one when it is due. A parked
// event never holds back the events behind it, and a poll never walks past
// parked rows. With Concurrency above 1, or several processes, two messages
// of one order can be handled at once; the Handler's trace store makes
// duplicates of one waybill cost one WeChat call either way.
//
// Time: due times and polls use the application's clock, never the
// database's, so a database clock that runs ahead cannot hand parked events
// back early. Processes that share a database need clocks that agree (NTP).
// Watermill's delay metadata keeps whole seconds; the Handler rounds its due
// times up, and a row is never handed out before the time written there.
//
// Guarantees: at-least-once, like Kafka, and nothing lost. A row is deleted
// only when its handler acked it. Each delivery of it runs in a savepoint
// of the row's transaction: a nack, or a handler that outlives
// Config.AckDeadline, undoes what that delivery published and hands the
// message out again (from the same transaction, the row still locked, or,
// after many deliveries, from a new one); a crash rolls back the whole
// transaction and the row is taken again. Nothing a delivery published
// commits unless it was acked. Close and
// the end of Subscribe's context drain: no new rows, and the messages in
// flight get Config.DrainTimeout to finish; then what they published is
// undone and their rows are given back.
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
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Config configures the subscribers and publishers of this package. The zero
// value means the defaults documented on each field.
type Config struct {
	// Logger: nil means watermill.NopLogger. Trace-level entries are
	// dropped: watermill-sql logs every query's arguments there, payloads
	// (phone numbers) and all.
	Logger watermill.LoggerAdapter
	// PollInterval is how long an idle subscriber waits before it looks for
	// a row again: the most a new event waits, and how late a delayed one
	// may come back. Zero means 1 s.
	PollInterval time.Duration
	// AckDeadline bounds one delivery of a message: one not acked or nacked
	// by then is nacked for it, its context cancelled and what it wrote in
	// the delivery's transaction undone, and it is handed out again. Keep it
	// above the Handler's MaxWaitInPlace (25 s by default) plus a publish,
	// or a slow delivery is handled twice: a handler that ignores its
	// cancelled context may still run when the message is handed out
	// again (its publishes then fail, and its ack counts for nothing).
	// Zero means 2 min.
	AckDeadline time.Duration
	// DrainTimeout bounds the drain of Close (or of the end of Subscribe's
	// context): the subscriber stops handing out rows at once, and the
	// messages in flight get this long to be acked or nacked; then their
	// writes are undone and their rows given back. Close returns at most 5 s
	// after that, however the database behaves. Keep it above MaxWaitInPlace plus a publish, so
	// that a shutdown never cuts a WeChat call short (a call cut short is
	// paid for again), and below the router's CloseTimeout, so that the
	// router waits for it. Zero means 30 s.
	DrainTimeout time.Duration
	// NackResendSleep is how long a nacked message waits before it is
	// handed out again; its row stays locked meanwhile. Zero means 1 s.
	NackResendSleep time.Duration
	// Concurrency is how many messages of one topic a Subscriber hands out
	// at once, each in its own transaction, holding a database connection
	// while it is handled. Zero means 1: one message at a time, the one
	// ready first.
	Concurrency int
	// KeepAcked marks acknowledged rows acked instead of deleting them, for
	// an audit trail, or for Replay to find dead letters the application
	// has read; the poll's index skips them, but something must delete them
	// in time, or the table only grows.
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
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if _, ok := c.Logger.(noTrace); !ok {
		c.Logger = noTrace{c.Logger}
	}
}

// noTrace drops watermill-sql's trace entries, which hold query arguments.
type noTrace struct{ watermill.LoggerAdapter }

func (noTrace) Trace(string, watermill.LogFields) {}

func (l noTrace) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return noTrace{l.LoggerAdapter.With(fields)}
}

// Validate reports a configuration that cannot work. Zero fields mean their
// defaults.
func (c Config) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"PollInterval", c.PollInterval}, {"AckDeadline", c.AckDeadline}, {"NackResendSleep", c.NackResendSleep}, {"DrainTimeout", c.DrainTimeout}} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("postgres: %s %s must not be negative", d.name, d.d))
		}
	}
	if c.Concurrency < 0 || c.Concurrency > 256 {
		errs = append(errs, fmt.Errorf("postgres: Concurrency %d must be at most 256 (0 means 1)", c.Concurrency))
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
// Each row has a ready_at column, set as it is inserted: the due time of
// Watermill's delay metadata, or else the time of the insert, both by the
// application's clock, which the poll compares it with too (a database
// clock running ahead would hand parked events back early, to be parked
// again and again). The poll takes the row ready first, ties by offset,
// from an index on (ready_at, offset): it never walks past parked rows,
// however many. And it never reads the JSON metadata in SQL: one header
// holding a NUL ("\u0000" cannot be text) or a due time that is not a time
// would make every poll of the table fail, and stall it for good.
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
	index := `"` + strings.Trim(table, `"`) + `_ready_idx"`
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
			"ready_at" TIMESTAMP WITH TIME ZONE NOT NULL
		);
		CREATE INDEX IF NOT EXISTS ` + index + ` ON ` + table + ` (ready_at, "offset") WHERE acked = false;
	END IF;
END $waybill$`}}, nil
}

// ddlLock is the advisory lock key of table creation.
const ddlLock = 0x77617962696c6c // "waybill"

func (s schema) InsertQuery(params wmsql.InsertQueryParams) (wmsql.Query, error) {
	if err := checkTopic(params.Topic); err != nil {
		return wmsql.Query{}, err
	}
	now := time.Now()
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
		args = append(args, msg.UUID, []byte(msg.Payload), md, readyAt(msg, now))
	}
	return wmsql.Query{Query: `INSERT INTO ` + s.MessagesTable(params.Topic) + ` (uuid, payload, metadata, ready_at) VALUES ` + b.String(), Args: args}, nil
}

// readyAt is when msg may be handed out: the due time of Watermill's delay
// metadata, or now when it has none, or one that is not a time, which no
// one can honour.
func readyAt(msg *message.Message, now time.Time) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(delay.DelayedUntilKey)); err == nil {
		return t
	}
	return now
}

func (s schema) SelectQuery(params wmsql.SelectQueryParams) (wmsql.Query, error) {
	if params.ConsumerGroup != "" {
		return wmsql.Query{}, errors.New("postgres: consumer groups are not supported by the queue schema")
	}
	if err := checkTopic(params.Topic); err != nil {
		return wmsql.Query{}, err
	}
	// Built for every poll: $1 is this poll's time.
	return wmsql.Query{Query: `SELECT "offset", uuid, payload, metadata FROM ` + s.MessagesTable(params.Topic) +
		` WHERE acked = false AND ready_at <= $1` +
		` ORDER BY ready_at, "offset" LIMIT 1 FOR UPDATE SKIP LOCKED`, Args: []any{time.Now()}}, nil
}

func (s schema) SubscribeIsolationLevel() stdsql.IsolationLevel { return stdsql.LevelReadCommitted }

// validTopic is watermill-sql's rule for topic names, which become table
// names inside quotes, less the $ that could end the dollar quote of
// table creation; at most MaxTopicLength of them.
var validTopic = regexp.MustCompile(`^[A-Za-z0-9\-:._]+$`)

// MaxTopicLength is the longest topic name: PostgreSQL cuts identifiers at
// 63 bytes, and two longer topics could share a table.
const MaxTopicLength = 63 - len("watermill_") - len("_ready_idx")

// Table is the quoted name of the table that holds topic, for your own
// queries (counting a backlog, say). topic must be a valid topic name
// (letters, digits and -:._, at most MaxTopicLength), as every function
// here checks.
func Table(topic string) string { return newSchema().MessagesTable(topic) }

func checkTopic(topic string) error {
	if !validTopic.MatchString(topic) || len(topic) > MaxTopicLength {
		return fmt.Errorf("postgres: topic %q: only letters, digits and -:._, at most %d, may name a table", topic, MaxTopicLength)
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
	// The Subscriber keeps AckDeadline itself, per delivery, and undoes a
	// late delivery's writes. watermill-sql's own deadline runs once per
	// row taken and commits; the Subscriber lets a row go (and hands it out
	// no more) before it could strike a delivery in flight.
	deadline := 2*cfg.AckDeadline + cfg.DrainTimeout + 2*closeGrace
	return wmsql.SubscriberConfig{
		SchemaAdapter:    newSchema(),
		OffsetsAdapter:   wmsql.PostgreSQLQueueOffsetsAdapter{DeleteOnAck: !cfg.KeepAcked},
		InitializeSchema: true,
		AckDeadline:      &deadline,
		PollInterval:     cfg.PollInterval,
		// The Subscriber sleeps NackResendSleep itself, where Close can
		// interrupt it; watermill-sql's sleep cannot be.
		ResendInterval: time.Nanosecond,
		RetryInterval:  cfg.PollInterval,
	}
}
