package postgres

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
)

// deliveryKey marks a message's context with the delivery it belongs to,
// for a publisher on the same database to join its transaction.
type deliveryKey struct{}

type delivery struct {
	db *stdsql.DB
	tx wmsql.Tx
}

// savepoint brackets one delivery of a row inside the row's transaction:
// rolling back to it undoes what that delivery published, and brings a
// transaction a failed statement aborted back to life.
const savepoint = "waybill_delivery"

// closeGrace is how long closing a subscription's inner subscribers may wait
// for their database calls before those are cancelled: a query blocked on a
// lock or a dead server must not hold Close beyond DrainTimeout by more.
const closeGrace = 5 * time.Second

// Subscriber hands out the rows of a topic; see the package documentation
// for when a row is acknowledged and what a crash redelivers.
//
// It drains: when Close is called or Subscribe's context ends, it stops
// handing out rows, and the messages in flight keep their contexts and
// transactions for up to Config.DrainTimeout to be acked or nacked. Only
// then is what they published undone and their rows given back, so that a
// shutdown does not cut a WeChat call short.
type Subscriber struct {
	db  *stdsql.DB
	cfg Config

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup // subscriptions until their channels close
}

// NewSubscriber returns a subscriber on db. Each Subscribe creates its
// topic's table if needed and hands out up to Config.Concurrency messages at
// once. Each message in flight holds a connection of db's pool; a publisher
// joining its transaction needs one more for a topic's first publish (when
// it may have to create the table), and the stores need theirs.
func NewSubscriber(db *stdsql.DB, cfg Config) (*Subscriber, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Subscriber{db: db, cfg: cfg, closing: make(chan struct{})}, nil
}

// Subscribe returns the messages of topic until ctx ends or the subscriber
// is closed, and the drain is over; then the channel is closed.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkTopic(topic); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("postgres subscribe " + topic + ": subscriber closed")
	}
	s.wg.Add(1) // under the lock: Close waits for this subscription
	s.mu.Unlock()

	// The inner subscriptions outlive ctx by the drain: their messages'
	// contexts (and transactions) end when the drain does, not before.
	// Each subscription has subscribers of its own, one per message in
	// flight, so that each can be closed as soon as its forwarder is done.
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	subs := make([]*wmsql.Subscriber, 0, s.cfg.Concurrency)
	ins := make([]<-chan *message.Message, 0, s.cfg.Concurrency)
	for range s.cfg.Concurrency {
		sub, err := wmsql.NewSubscriber(wmsql.BeginnerFromStdSQL(s.db), subscriberConfig(s.cfg), s.cfg.Logger)
		if err == nil {
			subs = append(subs, sub)
			var in <-chan *message.Message
			if in, err = sub.Subscribe(inner, topic); err == nil {
				ins = append(ins, in)
				continue
			}
		}
		cancel()
		for _, sub := range subs {
			_ = sub.Close()
		}
		s.wg.Done()
		return nil, fmt.Errorf("postgres subscribe %s: %w", topic, err)
	}

	out := make(chan *message.Message)
	stop, expired := make(chan struct{}), make(chan struct{})
	var closes sync.WaitGroup
	for i, in := range ins {
		closes.Go(func() {
			s.forward(in, out, stop, expired)
			// Done with this slot: close its subscriber now rather than
			// at the end of the drain, so that it takes no further row
			// that other processes could have. Its ack, if one was made,
			// commits first.
			if err := subs[i].Close(); err != nil {
				s.cfg.Logger.Error("postgres: closing subscription", err, watermill.LogFields{"topic": topic})
			}
		})
	}
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		close(stop)
		done := make(chan struct{})
		go func() { closes.Wait(); close(done) }()
		drain := time.NewTimer(s.cfg.DrainTimeout)
		defer drain.Stop()
		select {
		case <-done:
		case <-drain.C:
			close(expired)
			select {
			case <-done:
			case <-time.After(closeGrace):
			}
		}
		// Ends whatever still waits on the database, and the contexts of
		// messages still being handled.
		cancel()
		<-done
		close(out)
	}()
	return out, nil
}

// forward hands the messages of one inner subscription to out, one at a
// time, each in a savepoint of its row's transaction and marked with its
// delivery. Once stop is closed it hands out no more, and returns when the
// message in flight is acked or nacked, or when expired is closed.
func (s *Subscriber) forward(in <-chan *message.Message, out chan<- *message.Message, stop, expired <-chan struct{}) {
	for {
		var msg *message.Message
		select {
		case m, ok := <-in:
			if !ok {
				return
			}
			msg = m
		case <-stop:
			return
		}
		// watermill-sql's context: it ends at its backstop deadline or with
		// the subscription.
		base := msg.Context()
		tx, ok := wmsql.TxFromContext(base)
		if !ok {
			s.cfg.Logger.Error("postgres: a message without its transaction", nil, watermill.LogFields{"uuid": msg.UUID})
			return
		}
		if _, err := tx.ExecContext(base, "SAVEPOINT "+savepoint); err != nil {
			// The transaction is broken (its connection lost, say):
			// nothing can be written in it, so hand nothing out and let
			// watermill-sql's deadline end it; the row goes back.
			s.cfg.Logger.Error("postgres: delivery's transaction unusable", err, watermill.LogFields{"uuid": msg.UUID})
			select {
			case <-base.Done():
				continue
			case <-expired:
				return
			}
		}
		ctx, cancel := context.WithTimeout(base, s.cfg.AckDeadline)
		ctx = context.WithValue(ctx, deliveryKey{}, &delivery{db: s.db, tx: tx})
		msg.SetContext(ctx) // the router sets its own later: keep ctx
		select {
		case out <- msg:
		case <-stop:
			cancel()
			s.undo(tx)
			return // not handed out; its row goes back when its subscriber closes
		}
		select {
		case <-msg.Acked():
			// watermill-sql deletes the row and commits.
		case <-msg.Nacked():
			s.undo(tx) // before watermill-sql hands the message out again
		case <-ctx.Done(): // AckDeadline, or the subscription ended
			s.giveUp(msg, tx)
		case <-expired:
			s.giveUp(msg, tx)
			cancel()
			return
		}
		cancel()
	}
}

// giveUp ends a delivery not acked in time: it nacks the message, and when
// that wins over an ack, undoes what the delivery published. An ack that won
// stands, and commits with what it published.
func (s *Subscriber) giveUp(msg *message.Message, tx wmsql.Tx) {
	if msg.Nack() {
		s.undo(tx)
	}
}

// undo rolls the transaction back to the delivery's savepoint.
func (s *Subscriber) undo(tx wmsql.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT "+savepoint); err != nil {
		s.cfg.Logger.Error("postgres: undoing a delivery", err, nil)
	}
}

// Close stops handing out messages, lets those in flight finish for up to
// Config.DrainTimeout, then undoes what the rest published, gives their
// rows back and waits for every subscription to end.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
