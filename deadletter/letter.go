package deadletter

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Letter is what waybill records about a dead-lettered event. Its fields
// travel as the HeaderDead* headers next to the untouched original payload.
type Letter struct {
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

// write adds d's headers to md.
func (d *Letter) write(md message.Metadata) {
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

// Parse reads the dead-letter headers of a message consumed from the
// dead-letter topic.
func Parse(msg *message.Message) (*Letter, error) {
	md := msg.Metadata
	reason := md.Get(HeaderDeadReason)
	if reason == "" {
		return nil, fmt.Errorf("message %s: no %s header: not a waybill dead letter", msg.UUID, HeaderDeadReason)
	}
	d := &Letter{Reason: Reason(reason), Errmsg: md.Get(HeaderDeadErrmsg), SourceTopic: md.Get(HeaderDeadSourceTopic), Dropped: md.Get(HeaderDeadDropped)}
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

// Message builds the dead letter of orig: its payload and headers
// untouched, its UUID kept (a redelivered event dead-letters as the same
// message, which replay and downstream deduplication rely on), d's headers
// added, and key, the order id when the event could be decoded, as
// HeaderDeadKey. A dead letter larger than maxBytes (payload plus headers;
// 0: no bound) is reduced so that it can be published: its payload, then
// its foreign headers, are dropped and named in HeaderDeadDropped, and the
// source topic, partition and offset still locate the original.
func (d *Letter) Message(orig *message.Message, key string, maxBytes int) *message.Message {
	md := make(message.Metadata, len(orig.Metadata)+len(deadHeaders))
	for k, v := range orig.Metadata {
		md[k] = v
	}
	d.write(md)
	if key != "" {
		md.Set(HeaderDeadKey, key)
	}
	payload := orig.Payload
	if maxBytes > 0 && messageSize(payload, md) > maxBytes {
		payload, md = reduce(payload, md, maxBytes)
	}
	msg := message.NewMessage(orig.UUID, payload)
	msg.Metadata = md
	return msg
}

// deadHeaders lists every header Message may add, so a replay can strip
// them and restore the original headers exactly.
var deadHeaders = []string{
	HeaderDeadReason, HeaderDeadKey, HeaderDeadErrcode, HeaderDeadErrmsg, HeaderDeadAttempts,
	HeaderDeadSourceTopic, HeaderDeadSourcePartition, HeaderDeadSourceOffset,
	HeaderDeadFirstFailure, HeaderDeadLastFailure, HeaderDeadDropped,
}

// messageSize is what a message weighs on the broker, near enough: payload
// and headers.
func messageSize(payload []byte, md message.Metadata) int {
	n := len(payload)
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// reduce makes a dead letter fit in limit bytes: it drops the payload, then,
// if that is not enough, the headers that are not waybill's own, and says
// what it dropped in HeaderDeadDropped. The dead letter's source topic,
// partition and offset still locate the original.
func reduce(payload []byte, md message.Metadata, limit int) ([]byte, message.Metadata) {
	dropped := fmt.Sprintf("payload (%d bytes)", len(payload))
	md.Set(HeaderDeadDropped, dropped)
	if messageSize(nil, md) > limit {
		var names []string
		for k := range md {
			if !strings.HasPrefix(k, "waybill_") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		for _, k := range names {
			delete(md, k)
		}
		dropped += fmt.Sprintf(", %d headers: %s", len(names), strings.Join(names, ","))
		md.Set(HeaderDeadDropped, truncate(dropped, maxReducedHeader))
		if messageSize(nil, md) > limit {
			// Only waybill's own headers are left, some of them from the
			// producer or the event (an order id as the key): cut each.
			for k, v := range md {
				md[k] = truncate(v, maxReducedHeader)
			}
		}
	}
	return []byte{}, md
}

// maxReducedHeader bounds each header of a reduced dead letter that is
// still too large without its payload.
const maxReducedHeader = 1024

// truncate cuts s to at most n bytes at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
