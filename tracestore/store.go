// Package tracestore remembers the waybills waybill has traced, so that a
// redelivered or duplicate order.shipped event reuses the token WeChat gave
// the first time instead of calling trace_waybill again, and so that
// concurrent duplicates make one call between them.
//
// The waybill Handler takes a Store in its Config; cmd/waybill builds one
// (Memory for one process, package tracestore/redis when processes share
// Redis); and users who keep traces elsewhere implement Store themselves,
// with the Key and Record defined here. Nothing in this package depends on
// Kafka, Redis or the Handler.
package tracestore

import (
	"context"
	"errors"
	"time"
)

// DefaultTTL is how long a record lives after its last Put when a store's
// config leaves its TTL zero: long enough for any redelivery of an event.
const DefaultTTL = 30 * 24 * time.Hour

// Record is what a completed trace leaves behind.
type Record struct {
	// WaybillToken is the token trace_waybill returned; WeChat says it never
	// expires, so a duplicate event reuses it.
	WaybillToken string
	// GoodsHash is the event.GoodsFingerprint of the goods list the waybill
	// was traced or last updated with: a different one calls for
	// update_waybill_goods.
	GoodsHash string
	// TracedAt is when trace_waybill succeeded.
	TracedAt time.Time
}

// Store remembers traces so that a redelivered or duplicate event reuses
// the token instead of calling WeChat again. Implementations are safe for
// concurrent use. Memory serves one process; package tracestore/redis shares
// one store between processes.
type Store interface {
	// Get returns the record of key; ok is false when there is none (never
	// stored, expired or evicted).
	Get(ctx context.Context, key Key) (rec Record, ok bool, err error)
	// Put stores rec under key, replacing any record there, and restarts the
	// record's time to live.
	Put(ctx context.Context, key Key, rec Record) error
	// Claim lets one owner at a time, across processes for shared stores,
	// trace a key: it returns ok=true and a release func to the winner;
	// others get ok=false and should wait (poll Get) or retry later. A
	// claim expires after ttl so a crashed holder does not block the key
	// forever; ttl must be positive.
	//
	// owner names the claimer. A claim already held by the same owner is
	// taken again and its ttl restarted: that is how a holder renews a claim
	// during a long call, and how a redelivered event takes back the claim
	// its earlier delivery could not release. "" means a fresh owner that
	// nobody can take the claim again as.
	//
	// The winner should Get again before calling WeChat: the previous holder
	// may have Put its record just before releasing. Release is safe to call
	// more than once and after expiry: it never removes a claim that has
	// since passed to someone else. Claims are independent of records.
	Claim(ctx context.Context, key Key, owner string, ttl time.Duration) (release func(), ok bool, err error)
}

// ErrBadRecord is returned (wrapped) by a Store's Get when the stored record
// cannot be read: it does not decode, or the key holds another kind of
// value. The Handler then treats the waybill as not traced and traces it
// again (WeChat answers a repeat with the same token), and its Put
// overwrites the bad record, so one corrupt key never stalls a partition.
var ErrBadRecord = errors.New("trace store: unreadable record")

// ClaimGetter is a Store that can take a claim and read the record in one
// step, which the handler uses when its Store has it, to save round trips
// to a shared store. Memory and the Redis store have it, and so does a type
// that embeds one: a wrapper that overrides Get or Claim must override
// ClaimGet (and PutRelease) too, or the handler bypasses its overrides.
type ClaimGetter interface {
	// ClaimGet is Claim(ctx, key, owner, ttl) followed by Get(ctx, key),
	// with both outcomes: the claim (release is nil unless won) and the
	// record as Get reports it (an unreadable one as ErrBadRecord, the claim
	// then released). owner must not be "".
	ClaimGet(ctx context.Context, key Key, owner string, ttl time.Duration) (release func(), won bool, rec Record, found bool, err error)
}

// PutReleaser is a Store that can store a record and give up the claim on
// its key in one step.
type PutReleaser interface {
	// PutRelease is Put(ctx, key, rec) followed by the release of owner's
	// claim on key (ClaimGet's or Claim's, taken with that owner). Whether a
	// failed Put still releases the claim is the store's to say; either way
	// a handler that traces the key next gets the same token from WeChat.
	PutRelease(ctx context.Context, key Key, rec Record, owner string) error
}

// ClaimThenGet is ClaimGet made of s's own Claim and Get, for a store
// whose two cannot be one step: a won claim is released again when the Get
// fails.
func ClaimThenGet(ctx context.Context, s Store, key Key, owner string, ttl time.Duration) (release func(), won bool, rec Record, found bool, err error) {
	if release, won, err = s.Claim(ctx, key, owner, ttl); err != nil {
		return nil, false, Record{}, false, err
	}
	rec, found, err = s.Get(ctx, key)
	if err != nil && won {
		release()
		return nil, false, Record{}, false, err
	}
	return release, won, rec, found, err
}
