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

// Subscriber hands out the rows of a topic; see the package documentation
// for when a row is acknowledged and what a crash redelivers.
//
// It drains: when Close is called or Subscribe's context ends, it stops
// handing out rows, and the messages in flight keep their contexts and
// transactions for up to Config.DrainTimeout to be acked or nacked. Only
// then are the rest rolled back and given back, so that a shutdown does not
// cut a WeChat call short.
type Subscriber struct {
	db  *stdsql.DB
	cfg Config

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // subscriptions until their channels close
}

// NewSubscriber returns a subscriber on db. Each Subscribe creates its
// topic's table if needed and hands out up to Config.Concurrency messages at
// once; db's pool needs that many connections free for it.
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
	select {
	case <-s.closing:
		return nil, errors.New("postgres subscribe " + topic + ": subscriber closed")
	default:
	}
	// The inner subscriptions outlive ctx by the drain: their messages'
	// contexts (and transactions) end when the drain does, not before.
	// Each subscription has subscribers of its own, so that closing them
	// ends it alone.
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	subs := make([]*wmsql.Subscriber, 0, s.cfg.Concurrency)
	closeSubs := func() error {
		var errs []error
		for _, sub := range subs {
			errs = append(errs, sub.Close())
		}
		return errors.Join(errs...)
	}
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
		_ = closeSubs()
		cancel()
		return nil, fmt.Errorf("postgres subscribe %s: %w", topic, err)
	}

	out := make(chan *message.Message)
	stop, expired := make(chan struct{}), make(chan struct{})
	var forwarders sync.WaitGroup
	for _, in := range ins {
		forwarders.Go(func() { s.forward(in, out, stop, expired) })
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		close(stop)
		done := make(chan struct{})
		go func() { forwarders.Wait(); close(done) }()
		timer := time.NewTimer(s.cfg.DrainTimeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			close(expired)
			<-done
		}
		// Closing (not cancelling) lets an ack made in the drain commit,
		// and rolls back the rows taken but not acked; cancelling then
		// ends the contexts of messages still being handled.
		if err := closeSubs(); err != nil {
			s.cfg.Logger.Error("postgres: closing subscription", err, watermill.LogFields{"topic": topic})
		}
		cancel()
		close(out)
	}()
	return out, nil
}

// forward hands the messages of one inner subscription to out, one at a
// time, each marked with its delivery. Once stop is closed it hands out no
// more, and returns when the message in flight is acked or nacked, or when
// expired is closed.
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
		ctx := msg.Context()
		if tx, ok := wmsql.TxFromContext(ctx); ok {
			ctx = context.WithValue(ctx, deliveryKey{}, &delivery{db: s.db, tx: tx})
			msg.SetContext(ctx)
		}
		select {
		case out <- msg:
		case <-stop:
			return // not handed out: its row goes back when the drain ends
		}
		// The inner subscription takes its next row only after this verdict.
		select {
		case <-msg.Acked():
		case <-msg.Nacked():
		case <-ctx.Done(): // the ack deadline, or the drain's end (the router sets its own context on msg)
		case <-expired:
			return
		}
	}
}

// Close stops handing out messages, lets those in flight finish for up to
// Config.DrainTimeout, then gives back the rows not acked and waits for
// every subscription to end.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}
