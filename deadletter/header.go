package deadletter

import "github.com/ThreeDotsLabs/watermill/message"

// DefaultTopic is the dead-letter topic unless configured otherwise.
const DefaultTopic = "order.shipped.dead"

// Header names (Kafka record headers, Watermill metadata) that waybill adds.
// A dead letter keeps the original payload and every original header
// untouched and adds the HeaderDead* headers, so a replay republishes it as
// it was.
const (
	// HeaderKey carries the partition key of messages waybill publishes
	// (waybill.traced) and that producers may set on their events: the order
	// id, so that everything about one order lands on one partition.
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
	// publish whole (see Letter.Message), e.g. "payload (2097152 bytes)";
	// absent when nothing was.
	HeaderDeadDropped = "waybill_dead_dropped"

	// HeaderReplays counts how often an event was replayed from the dead
	// letter topic.
	HeaderReplays = "waybill_replays"
)

// Headers of a parked event's history (see History, Park).
const (
	HeaderAttempts     = "waybill_attempts"         // calls sent for the event, all deliveries together
	HeaderFirstFailure = "waybill_first_failure_at" // RFC 3339, UTC
	HeaderDueAt        = "waybill_due_at"           // RFC 3339: when it may run again
	HeaderParkedFrom   = "waybill_parked_from"      // the topic to return it to
	HeaderParks        = "waybill_parks"            // how often it was parked
	HeaderParkedKey    = "waybill_parked_key"       // the order id: the parked copy's partition key
	// HeaderNotBefore is the earliest time the event may call WeChat again,
	// when that is later than its due time (it must wait longer than the
	// longest tier): back early, it is parked again without a call.
	HeaderNotBefore = "waybill_not_before"
	// HeaderNotYet counts WeChat's 931023 answers for the event, for the
	// Handler's bound on them.
	HeaderNotYet = "waybill_not_yet"
	// HeaderRetries counts the event's transient and token failures, so its
	// backoff keeps growing across parks.
	HeaderRetries = "waybill_retries"
	// HeaderTokenFailures counts its token failures, for the Handler's bound
	// on them across parks.
	HeaderTokenFailures = "waybill_token_failures"
)

// Key returns the order id waybill keyed md's message by: HeaderDeadKey,
// HeaderKey or HeaderParkedKey, whichever it carries; "" when none. Output
// keyed by it keeps everything about one order on one partition.
func Key(md message.Metadata) string {
	for _, h := range [...]string{HeaderDeadKey, HeaderKey, HeaderParkedKey} {
		if k := md.Get(h); k != "" {
			return k
		}
	}
	return ""
}
