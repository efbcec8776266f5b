package deadletter_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// TestLetterRoundTrip: what Message writes, Parse reads back, and Original
// and ReplayMetadata take away again, the producer's headers untouched.
func TestLetterRoundTrip(t *testing.T) {
	orig := message.NewMessage("m-1", []byte(`{"order_id":"A1"}`))
	orig.Metadata.Set("trace_id", "abc")
	deadletter.Park(orig.Metadata, deadletter.History{Attempts: 2, FirstFailure: t0, NotBefore: t0.Add(time.Hour), NotYet: 2, Parks: 1}, "A1", "in", t0.Add(time.Hour))
	l := &deadletter.Letter{Reason: deadletter.ReasonNotYetExhausted, HasErrcode: true, Errcode: 931023, Errmsg: "not yet",
		Attempts: 3, SourceTopic: "in", SourcePartition: 2, SourceOffset: 41, FirstFailure: t0, LastFailure: t0.Add(2 * time.Hour)}
	dead := l.Message(orig, "A1", 0)
	assert.Equal(t, "m-1", dead.UUID, "the original UUID")
	assert.Equal(t, orig.Payload, dead.Payload)
	assert.Equal(t, "A1", deadletter.Key(dead.Metadata))

	got, err := deadletter.Parse(dead)
	require.NoError(t, err)
	assert.Equal(t, l, got)

	assert.Equal(t, len(orig.Metadata), len(deadletter.Original(dead)), "Original strips exactly the dead-letter headers")
	assert.Equal(t, message.Metadata{"trace_id": "abc"}, deadletter.ReplayMetadata(dead), "a replay restarts the history")

	_, err = deadletter.Parse(message.NewMessage("m-2", nil))
	assert.ErrorContains(t, err, "not a waybill dead letter")
}

// TestLetterReduced: a dead letter over its bound drops its payload, then
// the producer's headers, and says so.
func TestLetterReduced(t *testing.T) {
	orig := message.NewMessage("m-1", []byte(strings.Repeat("x", 5000)))
	orig.Metadata.Set("big", strings.Repeat("y", 3000))
	l := &deadletter.Letter{Reason: deadletter.ReasonInvalidEvent, SourceTopic: "in", SourcePartition: -1, SourceOffset: -1}
	small := l.Message(orig, "", 6000)
	assert.Empty(t, small.Payload)
	assert.Equal(t, "payload (5000 bytes)", small.Metadata.Get(deadletter.HeaderDeadDropped))
	assert.Equal(t, orig.Metadata.Get("big"), small.Metadata.Get("big"), "headers stay while they fit")

	tiny := l.Message(orig, "", 1000)
	assert.Empty(t, tiny.Metadata.Get("big"))
	assert.Contains(t, tiny.Metadata.Get(deadletter.HeaderDeadDropped), "1 headers: big")
	got, err := deadletter.Parse(tiny)
	require.NoError(t, err)
	assert.NotEmpty(t, got.Dropped)
}

// TestHistoryTravels: ReadHistory reads what Park wrote, Unpark takes the
// trip's headers off and leaves the history, and garbage reads as zero.
func TestHistoryTravels(t *testing.T) {
	h := deadletter.History{Attempts: 4, FirstFailure: t0, NotBefore: t0.Add(time.Hour), NotYet: 3, Retries: 5, TokenFailures: 1, Parks: 7}
	md := message.Metadata{}
	deadletter.Park(md, h, "A1", "in", t0.Add(time.Minute))
	assert.Equal(t, h, deadletter.ReadHistory(md))
	assert.Equal(t, "A1", deadletter.Key(md))

	from, due := deadletter.Unpark(md)
	assert.Equal(t, "in", from)
	assert.True(t, due.Equal(t0.Add(time.Minute)))
	assert.Empty(t, md.Get(deadletter.HeaderDueAt))
	assert.Empty(t, md.Get(deadletter.HeaderParkedFrom))
	assert.Equal(t, h, deadletter.ReadHistory(md), "the history stays for the Handler")

	bad := message.Metadata{deadletter.HeaderAttempts: "-3", deadletter.HeaderNotYet: "x", deadletter.HeaderNotBefore: "soon", deadletter.HeaderParks: "-5"}
	assert.Equal(t, deadletter.History{}, deadletter.ReadHistory(bad))
	huge := message.Metadata{deadletter.HeaderParks: "99999999999999999999"}
	assert.Equal(t, math.MaxInt, deadletter.ReadHistory(huge).Parks, "a count too large stays over every bound")
	from, due = deadletter.Unpark(bad)
	assert.Empty(t, from)
	assert.True(t, due.IsZero(), "no due time: return it at once")
}

// An operator's tool reads why an event died from its headers.
func ExampleParse() {
	orig := message.NewMessage("m-1", []byte(`{"order_id":"A1"}`))
	l := &deadletter.Letter{Reason: deadletter.ReasonConfiguration, HasErrcode: true, Errcode: 48001, Errmsg: "api unauthorized",
		Attempts: 1, SourceTopic: "order.shipped", SourcePartition: 0, SourceOffset: 7, FirstFailure: t0, LastFailure: t0}
	dead := l.Message(orig, "A1", 0)

	got, _ := deadletter.Parse(dead)
	fmt.Println(got.Reason, got.Errcode, got.Errmsg)
	fmt.Printf("from %s/%d/%d\n", got.SourceTopic, got.SourcePartition, got.SourceOffset)
	// Output:
	// configuration 48001 api unauthorized
	// from order.shipped/0/7
}
