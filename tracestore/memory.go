package tracestore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"sync"
	"time"
)

// DefaultMemoryEntries is MemoryConfig.MaxEntries when it is zero.
const DefaultMemoryEntries = 100_000

// MemoryConfig configures a Memory store. The zero value is ready to use.
type MemoryConfig struct {
	// MaxEntries bounds the records kept; the least recently used (read or
	// written) goes first. 0 means DefaultMemoryEntries.
	MaxEntries int
	// TTL is how long a record lives after its last Put; reading it does not
	// extend it. 0 means DefaultTTL.
	TTL time.Duration
	// Now is the clock, called under the store's lock. Nil means time.Now.
	Now func() time.Time
}

func (c *MemoryConfig) setDefaults() {
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMemoryEntries
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a configuration that cannot work.
func (c *MemoryConfig) Validate() error {
	var errs []error
	if c.MaxEntries < 0 {
		errs = append(errs, fmt.Errorf("MaxEntries %d is negative", c.MaxEntries))
	}
	if c.MaxEntries > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("MaxEntries %d is above %d", c.MaxEntries, math.MaxInt32))
	}
	if c.TTL < 0 {
		errs = append(errs, fmt.Errorf("TTL %v is negative", c.TTL))
	}
	if len(errs) > 0 {
		return fmt.Errorf("memory store config: %w", errors.Join(errs...))
	}
	return nil
}

// Memory is a Store for one process: a bounded LRU of records, each living
// TTL after its Put, and claims that hold only within the process. Every
// operation is O(1) (amortized for claims). It is safe for concurrent use.
//
// A record costs about 100 bytes beside its token and goods hash: records
// live in one slice, linked by index, and are found by a 128-bit hash of
// their Key (from two seeds drawn when the store is made, so inputs cannot
// be chosen ahead to collide; two keys share a hash, and the second would
// read the first's record, with a chance of about n²/2¹²⁹).
type Memory struct {
	cfg   MemoryConfig
	seeds [2]maphash.Seed

	mu      sync.Mutex
	index   map[keyHash]int32 // → entries
	entries []memEntry
	free    int32      // first free entry, linked by its byUse next; none: -1
	lists   [2]memList // byUse and byAge

	claims    map[Key]memClaim
	claimSeq  uint64
	sweepSize int // len(claims) at which expired claims are swept next
}

type keyHash [2]uint64

type memEntry struct {
	hash keyHash
	// rec is the record, its GoodsHash moved into goods when it is the
	// 32 lowercase hex digits of event.GoodsFingerprint: 16 bytes in the
	// entry instead of a string of its own.
	rec     Record
	goods   [16]byte
	packed  bool
	expires int64       // unix nanoseconds
	links   [2]memLinks // in lists[byUse] and lists[byAge]
}

// pack stores rec in e.
func (e *memEntry) pack(rec Record) {
	e.packed = false
	if len(rec.GoodsHash) == 2*len(e.goods) && isLowerHex(rec.GoodsHash) {
		if _, err := hex.Decode(e.goods[:], []byte(rec.GoodsHash)); err == nil {
			rec.GoodsHash, e.packed = "", true
		}
	}
	e.rec = rec
}

// record is the record e holds.
func (e *memEntry) record() Record {
	rec := e.rec
	if e.packed {
		rec.GoodsHash = hex.EncodeToString(e.goods[:])
	}
	return rec
}

func isLowerHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// memLinks are an entry's neighbours in one list, by index; -1 is none.
type memLinks struct{ prev, next int32 }

// memList is a doubly linked list threaded through the entries, head
// first; -1 is none.
type memList struct{ head, tail int32 }

// The two lists, each oldest first: byUse by last Get or Put (the head is
// evicted when the store is full), byAge by last Put (expiry order, as the
// TTL is uniform).
const (
	byUse = iota
	byAge
)

type memClaim struct {
	owner   string
	expires time.Time
}

const minClaimSweep = 64

// NewMemory builds a Memory store. It panics if cfg.Validate fails, as a
// negative size or TTL is a programming error.
func NewMemory(cfg MemoryConfig) *Memory {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		panic("tracestore: " + err.Error())
	}
	return &Memory{
		cfg:       cfg,
		seeds:     [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		index:     make(map[keyHash]int32),
		free:      -1,
		lists:     [2]memList{{-1, -1}, {-1, -1}},
		claims:    make(map[Key]memClaim),
		sweepSize: minClaimSweep,
	}
}

var (
	_ Store       = (*Memory)(nil)
	_ ClaimGetter = (*Memory)(nil)
	_ PutReleaser = (*Memory)(nil)
)

func (s *Memory) hash(k Key) keyHash {
	return keyHash{maphash.Comparable(s.seeds[0], k), maphash.Comparable(s.seeds[1], k)}
}

// Get implements Store. A hit makes the record the most recently used.
func (s *Memory) Get(ctx context.Context, key Key) (Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, false, fmt.Errorf("trace store get: %w", err)
	}
	h := s.hash(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	i, ok := s.index[h]
	if !ok {
		return Record{}, false, nil
	}
	s.moveToBack(byUse, i)
	return s.entries[i].record(), true, nil
}

// Put implements Store. When the store is full, the least recently used
// record makes room.
func (s *Memory) Put(ctx context.Context, key Key, rec Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("trace store put: %w", err)
	}
	h := s.hash(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	s.dropExpired(now)
	expires := expiry(now, s.cfg.TTL)
	if i, ok := s.index[h]; ok {
		e := &s.entries[i]
		e.pack(rec)
		e.expires = expires
		s.moveToBack(byUse, i)
		s.moveToBack(byAge, i)
		return nil
	}
	if len(s.index) >= s.cfg.MaxEntries {
		s.remove(s.lists[byUse].head)
	}
	i := s.free
	if i >= 0 {
		s.free = s.entries[i].links[byUse].next
	} else {
		i = int32(len(s.entries))
		s.entries = append(s.entries, memEntry{})
	}
	s.entries[i] = memEntry{hash: h, expires: expires}
	s.entries[i].pack(rec)
	s.index[h] = i
	s.push(byUse, i)
	s.push(byAge, i)
	return nil
}

// expiry is now+ttl in unix nanoseconds, the far end of int64 for a ttl
// that would pass it (a "forever" of math.MaxInt64).
func expiry(now time.Time, ttl time.Duration) int64 {
	n := now.UnixNano()
	if ttl > math.MaxInt64-time.Duration(n) {
		return math.MaxInt64
	}
	return n + int64(ttl)
}

// Len is the number of live records.
func (s *Memory) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	return len(s.index)
}

// dropExpired removes the records whose time is up, oldest first, so expired
// records free their memory without waiting to be evicted.
func (s *Memory) dropExpired(now time.Time) {
	n := now.UnixNano()
	for i := s.lists[byAge].head; i >= 0 && n >= s.entries[i].expires; i = s.lists[byAge].head {
		s.remove(i)
	}
}

// remove unlinks entry i, frees what its record holds and puts it on the
// free list.
func (s *Memory) remove(i int32) {
	s.unlink(byUse, i)
	s.unlink(byAge, i)
	delete(s.index, s.entries[i].hash)
	s.entries[i] = memEntry{}
	s.entries[i].links[byUse].next = s.free
	s.free = i
}

// push appends entry i to list l.
func (s *Memory) push(l int, i int32) {
	list := &s.lists[l]
	s.entries[i].links[l] = memLinks{prev: list.tail, next: -1}
	if list.tail >= 0 {
		s.entries[list.tail].links[l].next = i
	} else {
		list.head = i
	}
	list.tail = i
}

// unlink takes entry i out of list l.
func (s *Memory) unlink(l int, i int32) {
	list, e := &s.lists[l], s.entries[i].links[l]
	if e.prev >= 0 {
		s.entries[e.prev].links[l].next = e.next
	} else {
		list.head = e.next
	}
	if e.next >= 0 {
		s.entries[e.next].links[l].prev = e.prev
	} else {
		list.tail = e.prev
	}
}

func (s *Memory) moveToBack(l int, i int32) {
	s.unlink(l, i)
	s.push(l, i)
}

// Claim implements Store. The claim holds within this Memory store only.
func (s *Memory) Claim(ctx context.Context, key Key, owner string, ttl time.Duration) (func(), bool, error) {
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
func (s *Memory) sweepClaims(now time.Time) {
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

// ClaimGet implements ClaimGetter.
func (s *Memory) ClaimGet(ctx context.Context, key Key, owner string, ttl time.Duration) (release func(), won bool, rec Record, found bool, err error) {
	return ClaimThenGet(ctx, s, key, owner, ttl)
}

// PutRelease implements PutReleaser: a failed Put (a cancelled context)
// releases nothing.
func (s *Memory) PutRelease(ctx context.Context, key Key, rec Record, owner string) error {
	if err := s.Put(ctx, key, rec); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, held := s.claims[key]; held && c.owner == owner {
		delete(s.claims, key)
	}
	return nil
}
