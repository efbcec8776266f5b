package waybill

import (
	"container/list"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/waybillkit/waybill/deadletter"
)

// defaultMemoEntries bounds the memo. An entry lives from a delivery that
// could not finish until its redelivery does: at most one per partition
// consumed, plus events whose partition moved to another process, which
// age out first.
const defaultMemoEntries = 10_000

// memoTTL is how long an entry outlives its not-before time (or its last
// update): a redelivery comes within seconds of it, so an entry this old is
// of an event that went elsewhere.
const memoTTL = time.Hour

// keyEscaper makes ':' free to separate the parts of a memo key, as
// tracestore.Key.String does for its own.
var keyEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// outcome is a decided end of an event whose publish failed. It is kept
// under its message's identity (delivery.outcomeKey), never shared with
// another message of the same event.
type outcome struct {
	token    string // waybill.traced with this token …
	tracedAt time.Time
	stored   bool               // the token came from the trace store
	dead     *deadletter.Letter // … or this dead letter
}

type memoEntry struct {
	hist history
	out  *outcome
}

// memo remembers, between deliveries of one event in this process, what the
// broker's redelivery cannot carry: the event's history and an outcome that
// could not be published. Without it, a redelivered event would call WeChat
// again at once. It is bounded (least recently stored goes first) and safe
// for concurrent use.
type memo struct {
	size    atomic.Int64 // len(entries), read without the lock
	mu      sync.Mutex
	max     int
	entries map[string]*list.Element // of *memoItem
	order   list.List                // least recently stored first
}

type memoItem struct {
	key     string
	entry   memoEntry
	expires time.Time
}

func newMemo(max int) *memo {
	return &memo{max: max, entries: make(map[string]*list.Element)}
}

func (m *memo) get(key string, now time.Time) (memoEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.entries[key]
	if !ok {
		return memoEntry{}, false
	}
	it := el.Value.(*memoItem)
	if !now.Before(it.expires) {
		m.order.Remove(el)
		delete(m.entries, key)
		m.sync()
		return memoEntry{}, false
	}
	return it.entry, true
}

// put stores e under key at now, replacing what was there.
func (m *memo) put(key string, e memoEntry, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	expires := now.Add(memoTTL)
	if e.hist.NotBefore.After(now) {
		expires = e.hist.NotBefore.Add(memoTTL)
	}
	if el, ok := m.entries[key]; ok {
		it := el.Value.(*memoItem)
		it.entry, it.expires = e, expires
		m.order.MoveToBack(el)
	} else {
		m.entries[key] = m.order.PushBack(&memoItem{key: key, entry: e, expires: expires})
	}
	for el := m.order.Front(); el != nil && (m.order.Len() > m.max || !now.Before(el.Value.(*memoItem).expires)); el = m.order.Front() {
		m.order.Remove(el)
		delete(m.entries, el.Value.(*memoItem).key)
	}
	m.sync()
}

func (m *memo) forget(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[key]; ok {
		m.order.Remove(el)
		delete(m.entries, key)
		m.sync()
	}
}

// len is the number of entries; the hot path reads it to skip the memo
// when nothing is pending.
func (m *memo) len() int { return int(m.size.Load()) }

// sync records the size after a change; called under the lock.
func (m *memo) sync() { m.size.Store(int64(len(m.entries))) }
