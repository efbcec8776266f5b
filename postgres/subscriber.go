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
		sub, in, err := s.newInner(inner, topic)
		if err == nil {
			subs, ins = append(subs, sub), append(ins, in)
			continue
		}
		cancel()
		for _, sub := range subs {
			_ = sub.Close()
		}
		s.wg.Done()
		return nil, fmt.Errorf("postgres subscribe %s: %w", topic, err)
	}

	out := make(chan *message.Message)
	// stop is closed the moment ctx ends (a child context is cancelled
	// with its parent, or born cancelled), and when Close begins.
	stopCtx, stopNow := context.WithCancel(ctx)
	stop, expired := stopCtx.Done(), make(chan struct{})
	var slots sync.WaitGroup
	for i := range subs {
		slots.Go(func() { s.slot(inner, topic, subs[i], ins[i], out, stop, expired) })
	}
	go func() {
		defer s.wg.Done()
		select {
		case <-stop:
		case <-s.closing:
			stopNow()
		}
		defer stopNow()
		done := make(chan struct{})
		go func() { slots.Wait(); close(done) }()
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

// newInner subscribes a new watermill-sql subscriber, one slot's, to topic.
func (s *Subscriber) newInner(ctx context.Context, topic string) (*wmsql.Subscriber, <-chan *message.Message, error) {
	sub, err := wmsql.NewSubscriber(wmsql.BeginnerFromStdSQL(s.db), subscriberConfig(s.cfg), s.cfg.Logger)
	if err != nil {
		return nil, nil, err
	}
	in, err := sub.Subscribe(ctx, topic)
	if err != nil {
		_ = sub.Close()
		return nil, nil, err
	}
	return sub, in, nil
}

// slot runs one message-in-flight slot of a subscription: it forwards the
// messages of its inner subscriber and, when forward gives up the inner
// subscriber's transaction, replaces it with a new one. When the slot is
// done it closes its subscriber at once, rather than at the end of the
// drain, so that it takes no further row that other processes could have;
// an ack made meanwhile commits first.
func (s *Subscriber) slot(inner context.Context, topic string, sub *wmsql.Subscriber, in <-chan *message.Message, out chan<- *message.Message, stop, expired <-chan struct{}) {
	for {
		replace := s.forward(in, out, stop, expired)
		if err := sub.Close(); err != nil {
			s.cfg.Logger.Error("postgres: closing subscription", err, watermill.LogFields{"topic": topic})
		}
		if !replace {
			return
		}
		select {
		case <-stop: // draining: no new subscriber, no new row
			return
		default:
		}
		for {
			var err error
			if sub, in, err = s.newInner(inner, topic); err == nil {
				break
			}
			s.cfg.Logger.Error("postgres: replacing a subscription", err, watermill.LogFields{"topic": topic})
			select {
			case <-stop:
				return
			case <-time.After(s.cfg.PollInterval):
			}
		}
	}
}

// forward hands the messages of one inner subscription to out, one at a
// time, each in a savepoint of its row's transaction and marked with its
// delivery. Once stop is closed it hands out no more, and returns when the
// message in flight is acked or nacked, or when expired is closed.
//
// It returns true when the inner subscription's transaction must be given
// up: it broke, or watermill-sql's own deadline for the row (which would
// commit whatever is pending) is too near for another delivery. Closing the
// inner subscriber then ends that transaction with nothing pending, and the
// row goes back to the table.
func (s *Subscriber) forward(in <-chan *message.Message, out chan<- *message.Message, stop, expired <-chan struct{}) (replace bool) {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		case <-s.closing:
			return true
		default:
			return false
		}
	}
	for {
		var msg *message.Message
		select {
		case m, ok := <-in:
			if !ok {
				return false
			}
			msg = m
		case <-stop:
			return false
		}
		if stopped() { // a ready message must not win over stop
			return false
		}
		// watermill-sql's context: it ends at its deadline for the row,
		// or with the subscription.
		base := msg.Context()
		if dl, ok := base.Deadline(); ok && time.Until(dl) < s.cfg.AckDeadline+closeGrace+time.Second {
			return true
		}
		tx, ok := wmsql.TxFromContext(base)
		if !ok {
			s.cfg.Logger.Error("postgres: a message without its transaction", nil, watermill.LogFields{"uuid": msg.UUID})
			return true
		}
		if _, err := tx.ExecContext(base, "SAVEPOINT "+savepoint); err != nil {
			// The transaction is broken (its connection lost, say):
			// nothing can be written in it.
			s.cfg.Logger.Error("postgres: delivery's transaction unusable", err, watermill.LogFields{"uuid": msg.UUID})
			return true
		}
		if stopped() {
			return false // not handed out; its row goes back when its subscriber closes
		}
		ctx, cancel := context.WithCancel(base)
		msg.SetContext(context.WithValue(ctx, deliveryKey{}, &delivery{db: s.db, tx: tx})) // the router sets its own later
		select {
		case out <- msg:
		case <-stop:
			cancel()
			return false
		}
		deadline := time.NewTimer(s.cfg.AckDeadline)
		var nacked, expiredNow bool
		select {
		case <-msg.Acked():
			// watermill-sql deletes the row and commits.
		case <-msg.Nacked():
			nacked = true
		case <-deadline.C:
			nacked = msg.Nack() // an ack that won stands
		case <-base.Done(): // the subscription ended
			nacked = msg.Nack()
		case <-expired:
			nacked, expiredNow = msg.Nack(), true
		}
		deadline.Stop()
		// Cancelled before the undo: a publish still under way fails
		// rather than land after it.
		cancel()
		if nacked {
			s.undo(tx)
		}
		if expiredNow {
			return false
		}
		if nacked {
			select {
			case <-time.After(s.cfg.NackResendSleep):
			case <-stop:
				return false
			}
		}
	}
}

// undo rolls the transaction back to the delivery's savepoint, and releases
// it, so that the next delivery's is not nested in it.
func (s *Subscriber) undo(tx wmsql.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	for _, q := range []string{"ROLLBACK TO SAVEPOINT " + savepoint, "RELEASE SAVEPOINT " + savepoint} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			s.cfg.Logger.Error("postgres: undoing a delivery", err, nil)
			return
		}
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
