package replay

import "github.com/waybillkit/waybill/deadletter"

// Outcome is what Run did with one record of the dead-letter topic.
type Outcome int

const (
	// Replayed: republished to Event.To.
	Replayed Outcome = iota + 1
	// WouldReplay: selected in a dry run.
	WouldReplay
	// SkippedByFilter: not selected by the filter.
	SkippedByFilter
	// SkippedOverLimit: selected, but already replayed MaxReplays times.
	SkippedOverLimit
	// SkippedInvalid: not a waybill dead letter (see Event.Problem), one
	// that names no topic to return to while Config.To is "", or one
	// published reduced, without its payload (deadletter.HeaderDeadDropped).
	SkippedInvalid
)

func (o Outcome) String() string {
	switch o {
	case Replayed:
		return "replayed"
	case WouldReplay:
		return "would_replay"
	case SkippedByFilter:
		return "skipped_by_filter"
	case SkippedOverLimit:
		return "skipped_over_limit"
	case SkippedInvalid:
		return "skipped_invalid"
	}
	return "unknown"
}

// Event is one record of the dead-letter topic as Run saw it.
type Event struct {
	// ID is the message UUID (Watermill's), the same as the original
	// event's.
	ID        string
	Partition int32
	Offset    int64
	// Key is the Kafka key, kept on republishing: the order id for the dead
	// letters waybill writes.
	Key string
	// OrderID comes from the payload (Decode), else from
	// deadletter.HeaderDeadKey.
	OrderID string
	// AppID comes from the payload (Decode); "" when it cannot be decoded.
	AppID string
	// Dead holds the dead-letter headers; nil when they are missing or
	// malformed.
	Dead *deadletter.Letter
	// Replays is deadletter.HeaderReplays as read: how often the event had
	// been replayed before.
	Replays int
	// To is the topic the event goes to, or would go to.
	To      string
	Outcome Outcome
	// Problem says why an event is SkippedInvalid.
	Problem string
}

// Counts counts records by outcome. In a dry run Replayed counts the events
// that would have been replayed.
type Counts struct {
	Scanned          int // records read
	Replayed         int
	SkippedByFilter  int
	SkippedOverLimit int
	SkippedInvalid   int
}

func (c *Counts) add(o Outcome) {
	c.Scanned++
	switch o {
	case Replayed, WouldReplay:
		c.Replayed++
	case SkippedByFilter:
		c.SkippedByFilter++
	case SkippedOverLimit:
		c.SkippedOverLimit++
	case SkippedInvalid:
		c.SkippedInvalid++
	}
}

// Range is the span of one partition that a replay reads: from the group's
// committed position (or the oldest record) to the end offset recorded when
// the replay started.
type Range struct {
	Partition  int32
	Start, End int64
}

// Report is the account of a replay.
type Report struct {
	// Counts are the totals.
	Counts
	// ByReason splits the counts by dead-letter reason; records that are
	// not waybill dead letters count under the empty Reason.
	ByReason map[deadletter.Reason]Counts
	// OverLimit lists the selected events skipped because they had been
	// replayed MaxReplays times already.
	OverLimit []Event
	// Group is the consumer group whose position the replay used.
	Group  string
	DryRun bool
	// Ranges are the partitions' spans, in partition order.
	Ranges []Range
}

// Progress is passed to Config.Progress after each record.
type Progress struct {
	// Counts are the counts so far.
	Counts
	// Total is the number of records between the start positions and the
	// end offsets: Scanned reaches it when the replay completes.
	Total int64
	// Event is the record just handled.
	Event Event
}
