package waybill

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/waybillkit/waybill/deadletter"
)

// Parking moves an event that cannot succeed now but can later (quota spent,
// 45011, 931023, its appid's breaker open) off the hot partition: the handler
// publishes a copy that comes back when it may run again and acknowledges the
// input, so the events behind it flow on. How the copy waits is Delay:
//
//   - DelayTopics (the default), for Kafka and any Pub/Sub that delivers at
//     once: the copy goes to a delay topic, and a kafka.DelayRunner
//     republishes it to the input topic when due.
//   - NativeDelay, for a Pub/Sub that holds a message back itself: the copy
//     goes back to the input topic with Watermill's delay metadata.
//
// One delay topic with mixed due times would block behind its head: an event
// parked until midnight would hold back one due in a minute. So each delay
// topic is a tier with one fixed delay, in which due order equals arrival
// order, plus one tier for "the next quota window", whose due time (the next
// reset) only grows with arrival time. An event goes to the shortest tier that
// waits at least as long as it must; one that must wait longer than the
// longest tier goes round it again.
//
// Per-order ordering: a parked event leaves its partition, so a later event
// of the same order can overtake it. waybill publishes one trace per order, so
// this matters only to producers that publish several events per order.
type ParkingConfig struct {
	// Delay is how a parked copy waits; the zero value is DelayTopics.
	Delay ParkDelay
	// Tiers are the fixed delays of DelayTopics, ascending. Nil means 1 min,
	// 10 min, 1 h.
	Tiers []time.Duration
	// TopicPrefix names the delay topics: prefix + tier (e.g.
	// "order.shipped.delay.10m0s") and prefix + "window". "" means the input
	// topic + ".delay.".
	TopicPrefix string
	// MaxParks bounds how often one event is parked for a quota answer
	// (45009, 45011) or 931023; then it is dead-lettered with
	// deadletter.ReasonTooManyAttempts and its history. Parks that wait out a
	// transient state (a fault's backoff, an open breaker, the wait budget)
	// do not count: such an event is never dead-lettered. Zero means 200.
	MaxParks int
}

// ParkDelay is how a parked event waits until it is due.
type ParkDelay int

const (
	// DelayTopics parks on tiered delay topics (ParkingConfig.Topics) that a
	// kafka.DelayRunner returns to the input topic when due. For Kafka,
	// which delivers every message at once.
	DelayTopics ParkDelay = iota
	// NativeDelay parks on the input topic itself, the copy marked with
	// Watermill's delay metadata (components/delay) for its due time,
	// rounded up to the second, the metadata's precision. For a Pub/Sub
	// that holds such a message back until then and delivers the messages
	// behind it meanwhile: package postgres (watermill-sql). Each event is
	// due at its own time, with no tiers, delay topics or DelayRunner;
	// Tiers and TopicPrefix are unused. On a Pub/Sub that ignores the
	// metadata, a parked event would come straight back and be parked
	// again until due: never use it there.
	NativeDelay
)

// String names d: "topics" or "native".
func (d ParkDelay) String() string {
	switch d {
	case DelayTopics:
		return "topics"
	case NativeDelay:
		return "native"
	}
	return fmt.Sprintf("ParkDelay(%d)", int(d))
}

func (c *ParkingConfig) setDefaults(input string) {
	if c.Tiers == nil {
		c.Tiers = []time.Duration{time.Minute, 10 * time.Minute, time.Hour}
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = input + ".delay."
	}
	if c.MaxParks == 0 {
		c.MaxParks = 200
	}
}

// Validate reports a configuration that cannot work. Zero fields mean their
// defaults.
func (c *ParkingConfig) Validate() error {
	if c.MaxParks < 0 {
		return fmt.Errorf("parking MaxParks %d must not be negative", c.MaxParks)
	}
	if c.Delay != DelayTopics && c.Delay != NativeDelay {
		return fmt.Errorf("parking Delay %s is neither DelayTopics nor NativeDelay", c.Delay)
	}
	if c.Tiers == nil {
		return nil // the defaults
	}
	for i, d := range c.Tiers {
		if d <= 0 {
			return fmt.Errorf("parking tier %d: delay %s must be positive", i, d)
		}
		if i > 0 && d <= c.Tiers[i-1] {
			return fmt.Errorf("parking tiers must ascend: %s after %s", d, c.Tiers[i-1])
		}
	}
	if len(c.Tiers) == 0 {
		return errors.New("parking needs at least one tier")
	}
	return nil
}

// Topics lists every delay topic, for creating them and for a
// kafka.DelayRunner; none with NativeDelay.
func (c ParkingConfig) Topics(input string) []string {
	if c.Delay == NativeDelay {
		return nil
	}
	c.setDefaults(input)
	out := make([]string, 0, len(c.Tiers)+1)
	for _, d := range c.Tiers {
		out = append(out, c.TopicPrefix+d.String())
	}
	return append(out, c.TopicPrefix+"window")
}

// route picks the topic and due time for an event consumed from input that
// must wait until until. window marks "the next quota window".
func (c *ParkingConfig) route(input string, now, until time.Time, window bool) (topic string, due time.Time) {
	if c.Delay == NativeDelay {
		// The metadata keeps whole seconds: rounding down would bring the
		// event back early, to be parked again for the rest of a second.
		due = until.UTC().Truncate(time.Second)
		if due.Before(until) {
			due = due.Add(time.Second)
		}
		return input, due
	}
	if window {
		return c.TopicPrefix + "window", until
	}
	wait := until.Sub(now)
	for _, d := range c.Tiers {
		if d >= wait {
			return c.TopicPrefix + d.String(), now.Add(d)
		}
	}
	last := c.Tiers[len(c.Tiers)-1]
	return c.TopicPrefix + last.String(), now.Add(last)
}

// park publishes the event to its delay topic. The payload and the original
// headers travel untouched; deadletter.Park updates the history headers and
// keys the copy by its order id.
//
// counts says whether this park is a step towards MaxParks: parks for
// quota answers are; parks that wait out a transient state (a fault's
// backoff, an open breaker, the wait budget, a copy back early) are not.
func (d *delivery) park(until time.Time, window, counts bool, now time.Time) (parked bool, err error) {
	p, msg := d.h.cfg.Parking, d.msg
	hist := d.hist.History
	if counts && hist.Parks >= p.MaxParks {
		return false, nil
	}
	if counts {
		hist.Parks++
	}
	hist.NotBefore = until
	topic, due := p.route(d.h.cfg.InputTopic, now, until, window)
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.SetContext(d.ctx) // see Config.Publisher
	out.Metadata = make(message.Metadata, len(msg.Metadata)+12)
	for k, v := range msg.Metadata {
		out.Metadata[k] = v
	}
	deadletter.Park(out.Metadata, hist, d.ev.OrderID, d.h.cfg.InputTopic, due)
	if p.Delay == NativeDelay {
		delay.Message(out, delay.Until(due))
	}
	if err := d.h.tracing.publish(d.ctx, "waybill park", topic, out.Metadata, func() error { return d.h.cfg.Publisher.Publish(topic, out) }); err != nil {
		// The redelivery must not call before until either, and parks it
		// the way this park meant to.
		if until.After(d.hist.NotBefore) {
			d.hist.NotBefore = until
		}
		d.hist.parkWindow, d.hist.parkCounts = window, counts
		d.remember(nil)
		return false, fmt.Errorf("park %s on %s: %w", msg.UUID, topic, err)
	}
	d.forget()
	d.parkedOn = topic
	d.outcome("parked", "waybill.delay_topic", topic)
	return true, nil
}

// repark parks an event that came back before its not-before time.
func (d *delivery) repark(now time.Time) error {
	parked, err := d.park(d.hist.NotBefore, d.hist.parkWindow, d.hist.parkCounts, now)
	if err != nil {
		return err
	}
	if parked {
		d.h.stats.parked.Add(1)
		d.h.observe(ObservedParked, d.ev.AppID, d.parkedOn)
		return nil
	}
	return d.deadLetter(d.hist.deadLetter(d.src, deadletter.ReasonTooManyAttempts, nil, "parked too often", now))
}

// parkOrDeadLetter parks the event until dec.Until, or dead-letters it with
// its history when it was parked MaxParks times already.
func (d *delivery) parkOrDeadLetter(dec Verdict, callErr error, now time.Time, logFields watermill.LogFields, counts bool) error {
	d.hist.failed(now)
	parked, err := d.park(dec.Until, dec.Window, counts, now)
	if err != nil {
		return err
	}
	if parked {
		d.h.cfg.Logger.Info("parked event", logFields.Add(watermill.LogFields{"until": dec.Until}))
		d.h.stats.parked.Add(1)
		d.h.observe(ObservedParked, d.ev.AppID, d.parkedOn)
		return nil
	}
	d.h.cfg.Logger.Info("dead-lettering event parked too often", logFields)
	return d.deadLetter(d.hist.deadLetter(d.src, deadletter.ReasonTooManyAttempts, callErr, "", now))
}
