// Package testpub is the Watermill publisher tests publish waybill's output
// to: it keeps every message by topic and can be told to fail. Only tests
// import it.
package testpub

import (
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
)

// Recorder is a message.Publisher that keeps what was published. While
// Fail is set, Publish returns it and keeps nothing: set it in the
// literal, and change it with SetFail once the Recorder is in use.
type Recorder struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
	Fail error
}

// Publish implements message.Publisher.
func (r *Recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Fail != nil {
		return r.Fail
	}
	if r.msgs == nil {
		r.msgs = map[string][]*message.Message{}
	}
	r.msgs[topic] = append(r.msgs[topic], msgs...)
	return nil
}

// SetFail makes Publish fail with err from now on; nil ends the failure.
func (r *Recorder) SetFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Fail = err
}

// Close implements message.Publisher.
func (r *Recorder) Close() error { return nil }

// On returns the messages published to topic, in order.
func (r *Recorder) On(topic string) []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs[topic]...)
}

// OnlyDeadLetter requires exactly one dead letter on pub's
// deadletter.DefaultTopic and returns it parsed.
func OnlyDeadLetter(t *testing.T, pub interface {
	On(topic string) []*message.Message
}) *deadletter.Letter {
	t.Helper()
	dead := pub.On(deadletter.DefaultTopic)
	if len(dead) != 1 {
		t.Fatalf("want one dead letter on %s, got %d", deadletter.DefaultTopic, len(dead))
	}
	dl, err := deadletter.Parse(dead[0])
	if err != nil {
		t.Fatal(err)
	}
	return dl
}
