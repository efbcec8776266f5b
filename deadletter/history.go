package deadletter

import (
	"errors"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// History is what an event's earlier calls left behind, as it travels in
// the headers of a parked copy: the Handler writes it when it parks the
// event (Park) and reads it back when the copy returns (ReadHistory), so
// that a parked event makes no call before its time and its bounds count
// across parks.
type History struct {
	Attempts      int       // calls sent, all deliveries together
	FirstFailure  time.Time // the first failed call
	NotBefore     time.Time // the earliest next call
	NotYet        int       // WeChat's 931023 answers
	Retries       int       // transient and token failures: the backoff's step
	TokenFailures int       // token failures
	Parks         int       // parks that count toward the Handler's MaxParks
}

// ReadHistory reads the history headers of md. Missing, negative or
// unreadable ones read as zero: an event without a history starts one. A
// park count too large to read is read as the largest int, so that it stays
// over the Handler's MaxParks.
func ReadHistory(md message.Metadata) History {
	// An absent header is the common case (an event's first delivery):
	// skip the parse, whose error would allocate.
	count := func(key string) int {
		s := md.Get(key)
		if s == "" {
			return 0
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
	instant := func(key string) time.Time {
		s := md.Get(key)
		if s == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}
		}
		return t
	}
	// Parks bounds the event: a count too large to read is over any
	// bound, never a fresh start.
	parks := 0
	if s := md.Get(HeaderParks); s != "" {
		n, err := strconv.Atoi(s)
		var ne *strconv.NumError
		if errors.As(err, &ne) && ne.Err == strconv.ErrRange && n > 0 {
			err = nil // Atoi's n is then math.MaxInt
		}
		if err == nil && n > 0 {
			parks = n
		}
	}
	return History{
		Attempts: count(HeaderAttempts), FirstFailure: instant(HeaderFirstFailure), NotBefore: instant(HeaderNotBefore),
		NotYet: count(HeaderNotYet), Retries: count(HeaderRetries), TokenFailures: count(HeaderTokenFailures),
		Parks: parks,
	}
}

// Park writes the headers of a parked copy into md: the history h, the
// order id as its partition key (HeaderParkedKey, so parked events spread
// over the delay topic's partitions whatever their producer set), the topic
// it returns to and when it is due there.
func Park(md message.Metadata, h History, orderID, from string, due time.Time) {
	md.Set(HeaderParkedKey, orderID)
	md.Set(HeaderAttempts, strconv.Itoa(h.Attempts))
	md.Set(HeaderFirstFailure, h.FirstFailure.UTC().Format(time.RFC3339Nano))
	md.Set(HeaderDueAt, due.UTC().Format(time.RFC3339Nano))
	md.Set(HeaderParkedFrom, from)
	md.Set(HeaderParks, strconv.Itoa(h.Parks))
	for key, n := range map[string]int{HeaderNotYet: h.NotYet, HeaderRetries: h.Retries, HeaderTokenFailures: h.TokenFailures} {
		if n > 0 {
			md.Set(key, strconv.Itoa(n))
		}
	}
	// Always: a DelayRunner whose clock runs ahead must not make the call
	// early; the Handler checks its own clock.
	md.Set(HeaderNotBefore, h.NotBefore.UTC().Format(time.RFC3339Nano))
}

// Unpark reads and removes the headers of the trip that Park wrote for a
// DelayRunner: the topic to return the event to ("" when absent) and when
// it is due (zero when absent or unreadable: return it at once rather than
// lose it). The history stays, for the Handler.
func Unpark(md message.Metadata) (from string, due time.Time) {
	from = md.Get(HeaderParkedFrom)
	due, err := time.Parse(time.RFC3339Nano, md.Get(HeaderDueAt))
	if err != nil {
		due = time.Time{}
	}
	delete(md, HeaderDueAt)
	delete(md, HeaderParkedFrom)
	return from, due
}

// historyHeaders are waybill's record of earlier attempts. A replay starts
// the history afresh: the cause was fixed, and an event that died of
// too_many_attempts or not_yet_exhausted must not die again of its old count.
var historyHeaders = []string{HeaderAttempts, HeaderFirstFailure, HeaderParks, HeaderNotYet, HeaderRetries, HeaderTokenFailures, HeaderNotBefore, HeaderDueAt, HeaderParkedFrom, HeaderParkedKey}

// ReplayMetadata returns the headers a replay republishes msg with: the
// original ones, without waybill's attempt history (which restarts) and
// without HeaderReplays (which the replay sets).
func ReplayMetadata(msg *message.Message) message.Metadata {
	md := Original(msg)
	for _, k := range historyHeaders {
		delete(md, k)
	}
	return md
}

// Original returns the headers msg had before it was dead-lettered.
func Original(msg *message.Message) message.Metadata {
	md := make(message.Metadata, len(msg.Metadata))
	for k, v := range msg.Metadata {
		md[k] = v
	}
	for _, k := range deadHeaders {
		delete(md, k)
	}
	return md
}
