package postgres

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"sync"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
)

// maxUUID is the width of the uuid column.
const maxUUID = 36

// NewPublisher returns a publisher that inserts messages into their topic's
// table through db, creating the table on a topic's first publish.
//
// When the messages carry the context of a delivery from a Subscriber on
// the same db (the waybill Handler publishes its outcomes with the input's
// context), they are inserted in that delivery's transaction: the outcome
// (waybill.traced, a dead letter, a parked copy) commits with the deletion
// of the input, and a crash, a lost connection or a failed commit takes
// both back, so the redelivery publishes it again, not a second copy next
// to the first. A delivery given back without an ack (a nack, past
// AckDeadline, a drain that ran out) has what it published undone with it.
// Otherwise messages are inserted at once,
// visible to subscribers when the insert returns. For the outbox, publish
// inside the application's transaction with PublishInTx.
func NewPublisher(db *stdsql.DB, cfg Config) (message.Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	pool, err := wmsql.NewPublisher(wmsql.BeginnerFromStdSQL(db), wmsql.PublisherConfig{
		SchemaAdapter:        newSchema(),
		AutoInitializeSchema: true,
	}, cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &publisher{db: db, pool: pool, cfg: cfg}, nil
}

type publisher struct {
	db    *stdsql.DB
	pool  *wmsql.Publisher
	cfg   Config
	ready sync.Map // topic → struct{}: its table exists
}

func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := checkMessages(topic, msgs); err != nil {
		return err
	}
	d, ok := msgs[0].Context().Value(deliveryKey{}).(*delivery)
	if !ok || d.db != p.db {
		return p.pool.Publish(topic, msgs...)
	}
	// DDL has no place in a delivery's transaction: a missing table is
	// created on the pool first, which needs a connection of its own.
	if _, ok := p.ready.Load(topic); !ok {
		ctx := msgs[0].Context()
		exists, err := tableIn(ctx, d.tx, topic)
		if err != nil {
			return fmt.Errorf("postgres publish to %s: %w", topic, err)
		}
		if !exists {
			if err := InitializeTopics(ctx, p.db, topic); err != nil {
				return err
			}
		}
		p.ready.Store(topic, struct{}{})
	}
	// A failed insert aborts the transaction; the handler's nack then rolls
	// it back to the delivery's savepoint, and the retry finds it usable.
	return insertIn(d.tx, topic, msgs)
}

func (p *publisher) Close() error { return p.pool.Close() }

// checkMessages refuses, before anything reaches the database, what would
// fail there: a failed statement aborts the transaction it ran in, the
// application's own for PublishInTx.
func checkMessages(topic string, msgs []*message.Message) error {
	if err := checkTopic(topic); err != nil {
		return err
	}
	for _, m := range msgs {
		if len(m.UUID) > maxUUID {
			return fmt.Errorf("postgres publish to %s: message UUID %q is longer than %d bytes", topic, m.UUID, maxUUID)
		}
	}
	return nil
}

// PublishInTx inserts msgs into topic's table inside tx, the application's
// own transaction: they are delivered if and only if tx commits, together
// with whatever else tx wrote. The table must exist (InitializeTopics, or a
// Subscriber or NewPublisher that used the topic before): creating it
// inside tx could commit it implicitly. Messages with no topic table, an
// invalid topic or a UUID over 36 bytes are refused before anything is sent,
// leaving tx usable; an insert that fails in the database aborts tx, like
// any failed statement.
func PublishInTx(ctx context.Context, tx *stdsql.Tx, topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := checkMessages(topic, msgs); err != nil {
		return err
	}
	q := wmsql.TxFromStdSQL(tx)
	exists, err := tableIn(ctx, q, topic)
	if err != nil {
		return fmt.Errorf("postgres publish %s in tx: %w", topic, err)
	}
	if !exists {
		return fmt.Errorf("postgres publish %s in tx: no table %s: run InitializeTopics first", topic, Table(topic))
	}
	// watermill-sql runs the insert in the first message's context.
	withCtx := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		withCtx[i] = m.Copy()
		withCtx[i].SetContext(ctx)
	}
	if err := insertIn(q, topic, withCtx); err != nil {
		return fmt.Errorf("postgres publish %s in tx: %w", topic, err)
	}
	return nil
}

// insertIn inserts msgs into topic's existing table through q (a
// transaction), in the first message's context.
func insertIn(q wmsql.ContextExecutor, topic string, msgs []*message.Message) error {
	pub, err := wmsql.NewPublisher(q, wmsql.PublisherConfig{SchemaAdapter: newSchema()}, nil)
	if err != nil {
		return err
	}
	return pub.Publish(topic, msgs...)
}

// tableIn reports whether topic's table exists, asked through q (a
// transaction, which this leaves usable).
func tableIn(ctx context.Context, q wmsql.ContextExecutor, topic string) (bool, error) {
	rows, err := q.QueryContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, Table(topic))
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var exists bool
	if rows.Next() {
		if err := rows.Scan(&exists); err != nil {
			return false, err
		}
	}
	return exists, nil
}
