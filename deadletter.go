package waybill

import (
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Reason classifies why an event was dead-lettered. Operators filter replays
// by it.
type Reason string

const (
	// ReasonInvalidEvent: the event could not be decoded or failed Validate.
	// WeChat was not called. Fix the producer, then replay.
	ReasonInvalidEvent Reason = "invalid_event"
	// ReasonPermanent: WeChat rejected the event itself (e.g. 40003 invalid
	// openid, 47001 data format error). Retrying the same event cannot help.
	ReasonPermanent Reason = "permanent"
	// ReasonConfiguration: WeChat refused the merchant's setup (48001 plugin
	// not enabled, 61007 provider not authorized, 40164 IP not allowed…).
	// An operator must act; then replay.
	ReasonConfiguration Reason = "configuration"
	// ReasonNotYetExhausted: WeChat kept answering 931023 (waybill unknown)
	// past the configured number of attempts.
	ReasonNotYetExhausted Reason = "not_yet_exhausted"
	// ReasonTooManyAttempts: a retriable event was parked more often than
	// the configured limit.
	ReasonTooManyAttempts Reason = "too_many_attempts"
)

// Known reports whether r is one of the reasons waybill writes.
func (r Reason) Known() bool {
	switch r {
	case ReasonInvalidEvent, ReasonPermanent, ReasonConfiguration, ReasonNotYetExhausted, ReasonTooManyAttempts:
		return true
	}
	return false
}

// Header names (Kafka record headers, Watermill metadata) that waybill adds.
// A dead letter keeps the original payload and every original header
// untouched and adds the HeaderDead* headers, so a replay republishes it as
// it was.
const (
	// HeaderKey carries the partition key of messages waybill publishes: the
	// order id, so that everything about one order lands on one partition.
	HeaderKey = "waybill_key"

	HeaderDeadReason          = "waybill_dead_reason"           // a Reason
	HeaderDeadKey             = "waybill_dead_key"              // the order id, when the event could be decoded
	HeaderDeadErrcode         = "waybill_dead_errcode"          // WeChat errcode; empty when WeChat was not called
	HeaderDeadErrmsg          = "waybill_dead_errmsg"           // WeChat errmsg, or the validation problem
	HeaderDeadAttempts        = "waybill_dead_attempts"         // calls made for this event, all deliveries together
	HeaderDeadSourceTopic     = "waybill_dead_source_topic"     // where the event was consumed
	HeaderDeadSourcePartition = "waybill_dead_source_partition" // -1 when not from Kafka
	HeaderDeadSourceOffset    = "waybill_dead_source_offset"    // -1 when not from Kafka
	HeaderDeadFirstFailure    = "waybill_dead_first_failure_at" // RFC 3339, UTC
	HeaderDeadLastFailure     = "waybill_dead_last_failure_at"  // RFC 3339, UTC
	// HeaderDeadDropped says what was left out of a dead letter too large to
	// publish whole (Config.MaxDeadLetterBytes), e.g. "payload (2097152
	// bytes)"; absent when nothing was.
	HeaderDeadDropped = "waybill_dead_dropped"

	// HeaderAttempts and HeaderFirstFailure travel with an event that is
	// parked and retried, so that its history survives redelivery.
	HeaderAttempts     = "waybill_attempts"
	HeaderFirstFailure = "waybill_first_failure_at"
	// HeaderReplays counts how often an event was replayed from the dead
	// letter topic.
	HeaderReplays = "waybill_replays"
)

// DeadLetter is what waybill records about a dead-lettered event. Its fields
// travel as the HeaderDead* headers next to the untouched original payload.
type DeadLetter struct {
	Reason          Reason
	Errcode         int // 0 when WeChat was not called
	HasErrcode      bool
	Errmsg          string
	Attempts        int
	SourceTopic     string
	SourcePartition int32
	SourceOffset    int64
	FirstFailure    time.Time
	LastFailure     time.Time
	// Dropped is HeaderDeadDropped: what the published dead letter left
	// out, "" when it is whole. A replay skips a dead letter without its
	// payload.
	Dropped string
}

// setHeaders writes d into md.
func (d *DeadLetter) setHeaders(md message.Metadata) {
	md.Set(HeaderDeadReason, string(d.Reason))
	if d.HasErrcode {
		md.Set(HeaderDeadErrcode, strconv.Itoa(d.Errcode))
	}
	md.Set(HeaderDeadErrmsg, d.Errmsg)
	md.Set(HeaderDeadAttempts, strconv.Itoa(d.Attempts))
	md.Set(HeaderDeadSourceTopic, d.SourceTopic)
	md.Set(HeaderDeadSourcePartition, strconv.FormatInt(int64(d.SourcePartition), 10))
	md.Set(HeaderDeadSourceOffset, strconv.FormatInt(d.SourceOffset, 10))
	md.Set(HeaderDeadFirstFailure, d.FirstFailure.UTC().Format(time.RFC3339Nano))
	md.Set(HeaderDeadLastFailure, d.LastFailure.UTC().Format(time.RFC3339Nano))
}

// ParseDeadLetter reads the dead-letter headers of a message consumed from
// the dead-letter topic.
func ParseDeadLetter(msg *message.Message) (*DeadLetter, error) {
	md := msg.Metadata
	reason := md.Get(HeaderDeadReason)
	if reason == "" {
		return nil, fmt.Errorf("message %s: no %s header: not a waybill dead letter", msg.UUID, HeaderDeadReason)
	}
	d := &DeadLetter{Reason: Reason(reason), Errmsg: md.Get(HeaderDeadErrmsg), SourceTopic: md.Get(HeaderDeadSourceTopic), Dropped: md.Get(HeaderDeadDropped)}
	var err error
	parseInt := func(key string, bits int) int64 {
		s := md.Get(key)
		if s == "" || err != nil {
			return 0
		}
		n, perr := strconv.ParseInt(s, 10, bits)
		if perr != nil {
			err = fmt.Errorf("message %s: header %s: %w", msg.UUID, key, perr)
		}
		return n
	}
	parseTime := func(key string) time.Time {
		s := md.Get(key)
		if s == "" || err != nil {
			return time.Time{}
		}
		t, perr := time.Parse(time.RFC3339Nano, s)
		if perr != nil {
			err = fmt.Errorf("message %s: header %s: %w", msg.UUID, key, perr)
		}
		return t
	}
	if md.Get(HeaderDeadErrcode) != "" {
		d.HasErrcode = true
		d.Errcode = int(parseInt(HeaderDeadErrcode, 32))
	}
	d.Attempts = int(parseInt(HeaderDeadAttempts, 32))
	d.SourcePartition = int32(parseInt(HeaderDeadSourcePartition, 32))
	d.SourceOffset = parseInt(HeaderDeadSourceOffset, 64)
	d.FirstFailure = parseTime(HeaderDeadFirstFailure)
	d.LastFailure = parseTime(HeaderDeadLastFailure)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// deadHeaders lists every header setHeaders may add, so a replay can strip
// them and restore the original headers exactly.
var deadHeaders = []string{
	HeaderDeadReason, HeaderDeadKey, HeaderDeadErrcode, HeaderDeadErrmsg, HeaderDeadAttempts,
	HeaderDeadSourceTopic, HeaderDeadSourcePartition, HeaderDeadSourceOffset,
	HeaderDeadFirstFailure, HeaderDeadLastFailure, HeaderDeadDropped,
}

// historyHeaders are waybill's record of earlier attempts. A replay starts
// the history afresh: the cause was fixed, and an event that died of
// too_many_attempts or not_yet_exhausted must not die again of its old count.
var historyHeaders = []string{HeaderAttempts, HeaderFirstFailure, HeaderParks, HeaderNotYet, HeaderRetries, HeaderTokenFailures, HeaderNotBefore, HeaderDueAt, HeaderParkedFrom, HeaderParkedKey}

// ReplayMetadata returns the headers a replay republishes msg with: the
// original ones, without waybill's attempt history (which restarts) and
// without HeaderReplays (which the replay sets).
func ReplayMetadata(msg *message.Message) message.Metadata {
	md := OriginalMetadata(msg)
	for _, k := range historyHeaders {
		delete(md, k)
	}
	return md
}

// OriginalMetadata returns the headers msg had before it was dead-lettered.
func OriginalMetadata(msg *message.Message) message.Metadata {
	md := make(message.Metadata, len(msg.Metadata))
	for k, v := range msg.Metadata {
		md[k] = v
	}
	for _, k := range deadHeaders {
		delete(md, k)
	}
	return md
}
