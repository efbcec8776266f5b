package waybill

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DedupKey identifies one waybill trace: WeChat keeps one token per (appid,
// waybill_id); trans_id separates two orders shipped on one waybill.
type DedupKey struct{ AppID, WaybillID, TransID string }

// keyEscaper makes ':' free to separate the parts of a DedupKey string; '%'
// is escaped too so that the escaping itself cannot be forged.
var keyEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// String is "appid:waybill_id:trans_id" with '%' and ':' in each part
// percent-escaped, so two different keys never share a string. Shared stores
// use it in their keys, so it never changes.
func (k DedupKey) String() string {
	return keyEscaper.Replace(k.AppID) + ":" + keyEscaper.Replace(k.WaybillID) + ":" + keyEscaper.Replace(k.TransID)
}

// TraceRecord is what a completed trace leaves behind.
type TraceRecord struct {
	// WaybillToken is the token trace_waybill returned; WeChat says it never
	// expires, so a duplicate event reuses it.
	WaybillToken string
	// GoodsHash is the GoodsFingerprint of the goods list the waybill was
	// traced or last updated with: a different one calls for
	// update_waybill_goods.
	GoodsHash string
	// TracedAt is when trace_waybill succeeded.
	TracedAt time.Time
}

// GoodsFingerprint is a stable hash of the goods list as the buyer sees it:
// name, image URL and description of each line, in order. It is the first 32
// hex digits of a SHA-256 over the length-prefixed fields, so no two lists
// share a fingerprint by shifting text between fields. Shared stores keep it,
// so its definition never changes.
func GoodsFingerprint(goods []Goods) string {
	h := sha256.New()
	var buf []byte
	for _, g := range goods {
		for _, f := range [...]string{g.Name, g.ImageURL, g.Description} {
			buf = strconv.AppendInt(buf[:0], int64(len(f)), 10)
			buf = append(buf, ':')
			buf = append(buf, f...)
			h.Write(buf)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// TraceStore remembers traces so that a redelivered or duplicate event reuses
// the token instead of calling WeChat again. Implementations are safe for
// concurrent use. MemoryTraceStore serves one process; package redisdedup shares
// one store between processes.
type TraceStore interface {
	// Get returns the record of key; ok is false when there is none (never
	// stored, expired or evicted).
	Get(ctx context.Context, key DedupKey) (rec TraceRecord, ok bool, err error)
	// Put stores rec under key, replacing any record there, and restarts the
	// record's time to live.
	Put(ctx context.Context, key DedupKey, rec TraceRecord) error
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
	Claim(ctx context.Context, key DedupKey, owner string, ttl time.Duration) (release func(), ok bool, err error)
}

// ErrBadRecord is returned (wrapped) by a TraceStore's Get when the stored
// record cannot be read: it does not decode, or the key holds another kind
// of value. The Handler then treats the waybill as not traced and traces it
// again (WeChat answers a repeat with the same token), and its Put
// overwrites the bad record, so one corrupt key never stalls a partition.
var ErrBadRecord = errors.New("trace store: unreadable record")

// Defaults of MemoryTraceStoreConfig.
const (
	DefaultMemoryTraceStoreEntries = 100_000
	DefaultTraceTTL                = 30 * 24 * time.Hour
)

// MemoryTraceStoreConfig configures a MemoryTraceStore. The zero value is ready to use.
type MemoryTraceStoreConfig struct {
	// MaxEntries bounds the records kept; the least recently used (read or
	// written) goes first. 0 means DefaultMemoryTraceStoreEntries.
	MaxEntries int
	// TTL is how long a record lives after its last Put; reading it does not
	// extend it. 0 means DefaultTraceTTL.
	TTL time.Duration
	// Now is the clock, called under the store's lock. Nil means time.Now.
	Now func() time.Time
}

func (c *MemoryTraceStoreConfig) setDefaults() {
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMemoryTraceStoreEntries
	}
	if c.TTL == 0 {
		c.TTL = DefaultTraceTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a configuration that cannot work.
func (c *MemoryTraceStoreConfig) Validate() error {
	var errs []error
	if c.MaxEntries < 0 {
		errs = append(errs, fmt.Errorf("MaxEntries %d is negative", c.MaxEntries))
	}
	if c.TTL < 0 {
		errs = append(errs, fmt.Errorf("TTL %v is negative", c.TTL))
	}
	if len(errs) > 0 {
		return fmt.Errorf("memory store config: %w", errors.Join(errs...))
	}
	return nil
}

// MemoryTraceStore is a TraceStore for one process: a bounded LRU of records, each
// living TTL after its Put, and claims that hold only within the process.
// Every operation is O(1) (amortized for claims). It is safe for concurrent
// use.
type MemoryTraceStore struct {
	cfg MemoryTraceStoreConfig

	mu      sync.Mutex
	entries map[DedupKey]*memEntry
	lru     list.List // of *memEntry, most recently used first
	byAge   list.List // of *memEntry, oldest Put first: expiry order, as TTL is uniform

	claims    map[DedupKey]memClaim
	claimSeq  uint64
	sweepSize int // len(claims) at which expired claims are swept next
}

type memEntry struct {
	key     DedupKey
	rec     TraceRecord
	expires time.Time
	lruElem *list.Element
	ageElem *list.Element
}

type memClaim struct {
	owner   string
	expires time.Time
}

const minClaimSweep = 64

// NewMemoryTraceStore builds a MemoryTraceStore. It panics if cfg.Validate fails, as a
// negative size or TTL is a programming error.
func NewMemoryTraceStore(cfg MemoryTraceStoreConfig) *MemoryTraceStore {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		panic("waybill: " + err.Error())
	}
	return &MemoryTraceStore{
		cfg:       cfg,
		entries:   make(map[DedupKey]*memEntry),
		claims:    make(map[DedupKey]memClaim),
		sweepSize: minClaimSweep,
	}
}

var _ TraceStore = (*MemoryTraceStore)(nil)

// Get implements TraceStore. A hit makes the record the most recently used.
func (s *MemoryTraceStore) Get(ctx context.Context, key DedupKey) (TraceRecord, bool, error) {
	if err := ctx.Err(); err != nil {
		return TraceRecord{}, false, fmt.Errorf("trace store get: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	e, ok := s.entries[key]
	if !ok {
		return TraceRecord{}, false, nil
	}
	s.lru.MoveToFront(e.lruElem)
	return e.rec, true, nil
}

// Put implements TraceStore. When the store is full, the least recently used
// record makes room.
func (s *MemoryTraceStore) Put(ctx context.Context, key DedupKey, rec TraceRecord) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("trace store put: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	s.dropExpired(now)
	expires := now.Add(s.cfg.TTL)
	if e, ok := s.entries[key]; ok {
		e.rec, e.expires = rec, expires
		s.lru.MoveToFront(e.lruElem)
		s.byAge.MoveToBack(e.ageElem)
		return nil
	}
	e := &memEntry{key: key, rec: rec, expires: expires}
	e.lruElem = s.lru.PushFront(e)
	e.ageElem = s.byAge.PushBack(e)
	s.entries[key] = e
	for len(s.entries) > s.cfg.MaxEntries {
		s.remove(s.lru.Back().Value.(*memEntry))
	}
	return nil
}

// Len is the number of live records.
func (s *MemoryTraceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	return len(s.entries)
}

// dropExpired removes the records whose time is up, oldest first, so expired
// records free their memory without waiting to be evicted.
func (s *MemoryTraceStore) dropExpired(now time.Time) {
	for el := s.byAge.Front(); el != nil; el = s.byAge.Front() {
		e := el.Value.(*memEntry)
		if now.Before(e.expires) {
			return
		}
		s.remove(e)
	}
}

func (s *MemoryTraceStore) remove(e *memEntry) {
	s.lru.Remove(e.lruElem)
	s.byAge.Remove(e.ageElem)
	delete(s.entries, e.key)
}

// Claim implements TraceStore. The claim holds within this MemoryTraceStore only.
func (s *MemoryTraceStore) Claim(ctx context.Context, key DedupKey, owner string, ttl time.Duration) (func(), bool, error) {
	if ttl <= 0 {
		return nil, false, fmt.Errorf("trace store claim %s: ttl %v is not positive", key, ttl)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("trace store claim %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	if owner == "" {
		s.claimSeq++
		owner = "\x00" + strconv.FormatUint(s.claimSeq, 10) // no caller can name it
	}
	if c, held := s.claims[key]; held && now.Before(c.expires) && c.owner != owner {
		return nil, false, nil
	}
	s.claims[key] = memClaim{owner: owner, expires: now.Add(ttl)}
	s.sweepClaims(now)
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		// The owner's: a later take by the same owner is released by it too,
		// as the Redis store's compare-and-delete on the owner does.
		if c, held := s.claims[key]; held && c.owner == owner {
			delete(s.claims, key)
		}
	}
	return release, true, nil
}

// sweepClaims forgets expired claims that nobody released (a holder that
// crashed), each time the claim count doubles: amortized O(1).
func (s *MemoryTraceStore) sweepClaims(now time.Time) {
	if len(s.claims) < s.sweepSize {
		return
	}
	for k, c := range s.claims {
		if !now.Before(c.expires) {
			delete(s.claims, k)
		}
	}
	s.sweepSize = max(2*len(s.claims), minClaimSweep)
}
