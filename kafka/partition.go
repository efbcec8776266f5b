package kafka

import (
	"context"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// record is one consumed record while its partition holds it.
type record struct {
	rec    *sarama.ConsumerMessage // nil once finished, to free its payload
	offset int64
	key    string
	size   int
	done   bool
	next   *record // the next record queued behind the same key
}

// keyQueue is what waits for a busy key, in offset order; the record in
// flight for the key is not in it.
type keyQueue struct{ first, last *record }

// delivery is a record's message, handed out or about to be.
type delivery struct {
	r      *record
	msg    *message.Message
	cancel context.CancelFunc
}

// outcome is what became of a delivery: acked or nacked.
type outcome struct {
	r     *record
	acked bool
}

// partition serves one claimed partition. One goroutine (run) owns its
// state; the deliveries' watchers only send outcomes to it.
type partition struct {
	h     *orderedHandler
	cfg   *OrderedConfig
	sess  sarama.ConsumerGroupSession
	claim sarama.ConsumerGroupClaim
	// ctx is the parent of the messages' contexts, cancelled when the
	// partition is let go.
	ctx    context.Context
	cancel context.CancelFunc
	// draining is set when the partition stops handing out messages;
	// drainAt then bounds how long it waits for those in flight.
	draining bool
	// results has room for one outcome per message in flight, so a
	// watcher never blocks.
	results chan outcome

	window   fifo[*record] // every held record, in offset order, from the oldest unfinished
	keys     map[string]keyQueue
	runnable fifo[*record]  // free to go, waiting for a slot
	delayed  fifo[retry]    // nacked, waiting out NackResendSleep without a slot, their keys busy
	sendQ    fifo[delivery] // in flight, not yet taken by the consumer
	inflight int            // in sendQ or taken, not finished
	bytes    int            // key and value bytes of the held records
	drainAt  *time.Timer
	retryAt  *time.Timer // fires when the first delayed record is due
}

// retry is a nacked record and when it may go out again.
type retry struct {
	r   *record
	due time.Time
}

func newPartition(h *orderedHandler, sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) *partition {
	ctx, cancel := context.WithCancel(h.values)
	return &partition{
		h: h, cfg: &h.s.cfg, sess: sess, claim: claim,
		ctx: ctx, cancel: cancel,
		results: make(chan outcome, h.s.cfg.Concurrency),
		keys:    make(map[string]keyQueue),
	}
}

// run serves the partition until it is let go: revoked or its session
// ended, and then its messages in flight finished or DrainTimeout passed.
func (p *partition) run() {
	records := p.claim.Messages()
	sessionDone := p.sess.Context().Done()
	for {
		p.dispatch()
		var in <-chan *sarama.ConsumerMessage
		var due, drainDeadline <-chan time.Time
		switch {
		case p.draining && p.inflight == 0:
			return
		case p.draining:
			drainDeadline = p.drainAt.C
		default:
			if p.hasRoom() {
				in = records
			}
			if p.delayed.len() > 0 {
				due = p.retryTimer()
			}
		}
		var out chan<- *message.Message
		var next *message.Message
		if p.sendQ.len() > 0 {
			out, next = p.h.out, p.sendQ.front().msg
		}
		select {
		case <-due:
			p.releaseDue()
		case rec, ok := <-in:
			if !ok {
				p.drain()
				continue
			}
			p.add(rec)
		case out <- next:
			d := p.sendQ.pop()
			go p.watch(d)
		case o := <-p.results:
			p.finish(o)
		case <-sessionDone:
			sessionDone = nil
			if !p.draining {
				p.drain()
			}
		case <-drainDeadline:
			p.h.s.logger.Info("kafka subscriber: drain timed out, leaving messages in flight to the next owner", p.fields(watermill.LogFields{"in_flight": p.inflight}))
			return
		}
	}
}

// stop lets the partition go: every message's context is cancelled.
func (p *partition) stop() {
	p.cancel()
	if p.drainAt != nil {
		p.drainAt.Stop()
	}
	if p.retryAt != nil {
		p.retryAt.Stop()
	}
}

// retryTimer is a timer for the first delayed record's due time.
func (p *partition) retryTimer() <-chan time.Time {
	wait := time.Until(p.delayed.front().due)
	if p.retryAt == nil {
		p.retryAt = time.NewTimer(wait)
	} else {
		p.retryAt.Reset(wait)
	}
	return p.retryAt.C
}

// releaseDue makes the delayed records that are due free to go; all wait
// the same NackResendSleep, so the queue is in due order.
func (p *partition) releaseDue() {
	now := time.Now()
	for p.delayed.len() > 0 && !p.delayed.front().due.After(now) {
		p.runnable.push(p.delayed.pop().r)
	}
}

// hasRoom reports whether the partition may read another record.
func (p *partition) hasRoom() bool {
	if p.window.len() >= p.cfg.MaxUncommitted {
		return false
	}
	return p.bytes < p.cfg.MaxBytes || p.window.len() == 0
}

// add takes a record in: free to go if its key is, else queued behind it.
func (p *partition) add(rec *sarama.ConsumerMessage) {
	r := &record{rec: rec, offset: rec.Offset, key: p.cfg.Key(rec), size: len(rec.Key) + len(rec.Value)}
	p.window.push(r)
	p.bytes += r.size
	q, busy := p.keys[r.key]
	if !busy {
		p.keys[r.key] = keyQueue{}
		p.runnable.push(r)
		return
	}
	if q.last == nil {
		q.first = r
	} else {
		q.last.next = r
	}
	q.last = r
	p.keys[r.key] = q
}

// dispatch hands out free records while there are slots, unless draining.
func (p *partition) dispatch() {
	if p.draining {
		return
	}
	for p.inflight < p.cfg.Concurrency && p.runnable.len() > 0 {
		p.inflight++
		p.sendQ.push(p.deliver(p.runnable.pop()))
	}
}

// deliver makes the message of r, with a context of its own.
func (p *partition) deliver(r *record) delivery {
	msg, err := p.cfg.Unmarshaler.Unmarshal(r.rec)
	if err != nil {
		// Handing it out raw keeps it from being lost or stalling the
		// partition; the consumer decides what an unreadable message is.
		p.h.s.logger.Error("kafka subscriber: unmarshal, handing the record out raw", err, p.fields(watermill.LogFields{"offset": r.offset}))
		msg = message.NewMessage(watermill.NewUUID(), r.rec.Value)
		for _, h := range r.rec.Headers {
			msg.Metadata.Set(string(h.Key), string(h.Value))
		}
	}
	ctx, cancel := context.WithCancel(p.ctx)
	msg.SetContext(&recordContext{Context: ctx, pos: recordPosition{
		partition: r.rec.Partition, offset: r.offset, key: r.rec.Key, timestamp: r.rec.Timestamp,
	}})
	return delivery{r: r, msg: msg, cancel: cancel}
}

// watch waits for what the consumer makes of a message it took.
func (p *partition) watch(d delivery) {
	defer d.cancel()
	select {
	case <-d.msg.Acked():
		p.results <- outcome{r: d.r, acked: true}
	case <-d.msg.Nacked():
		p.results <- outcome{r: d.r}
	case <-p.ctx.Done():
	}
}

// finish applies an outcome. Either frees the record's slot. An acked
// record frees its key for the next one and moves the commit up to the
// oldest unfinished record; a nacked one waits NackResendSleep, its key
// still busy, then goes out again, or, when draining, is left unfinished.
func (p *partition) finish(o outcome) {
	r := o.r
	p.inflight--
	if !o.acked {
		if !p.draining {
			p.delayed.push(retry{r: r, due: time.Now().Add(p.cfg.NackResendSleep)})
		}
		return
	}
	r.done, r.rec = true, nil
	p.bytes -= r.size
	if q := p.keys[r.key]; q.first != nil {
		n := q.first
		q.first, n.next = n.next, nil
		if q.first == nil {
			q.last = nil
		}
		p.keys[r.key] = q
		p.runnable.push(n)
	} else {
		delete(p.keys, r.key)
	}
	var last *record
	for p.window.len() > 0 && p.window.front().done {
		last = p.window.pop()
	}
	if last != nil {
		p.sess.MarkOffset(p.claim.Topic(), p.claim.Partition(), last.offset+1, "")
	}
}

// drain stops handing out messages: those not yet taken are left
// unfinished at once, those taken get DrainTimeout.
func (p *partition) drain() {
	p.draining = true
	for p.sendQ.len() > 0 {
		p.sendQ.pop().cancel()
		p.inflight--
	}
	p.drainAt = time.NewTimer(p.cfg.DrainTimeout)
}

func (p *partition) fields(f watermill.LogFields) watermill.LogFields {
	return f.Add(watermill.LogFields{"topic": p.claim.Topic(), "partition": p.claim.Partition()})
}

// recordPosition is where a message's record was read.
type recordPosition struct {
	partition int32
	offset    int64
	key       []byte
	timestamp time.Time
}

type recordPositionKey struct{}

// recordContext is a message's context: its cancellation and its record's
// position in one value, so a message costs one allocation less.
type recordContext struct {
	context.Context
	pos recordPosition
}

func (c *recordContext) Value(key any) any {
	if key == (recordPositionKey{}) {
		return &c.pos
	}
	return c.Context.Value(key)
}

// fifo is a queue on a slice that reuses its space.
type fifo[T any] struct {
	items []T
	head  int
}

func (q *fifo[T]) len() int { return len(q.items) - q.head }
func (q *fifo[T]) front() T { return q.items[q.head] }
func (q *fifo[T]) push(v T) { q.items = append(q.items, v) }
func (q *fifo[T]) pop() T {
	var zero T
	v := q.items[q.head]
	q.items[q.head] = zero
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head >= 1024 && q.head*2 >= len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return v
}
