// Package redisstore is a wechat.TokenStore on Redis, for several processes
// (or machines) sharing appids: they see one token per appid and take turns
// refreshing it under a lock, so cgi-bin/token is fetched once per token
// lifetime between them and no process is left holding a superseded token.
//
// It is a package of its own so that the wechat package does not depend on a
// Redis client; cmd/waybill and programs that share tokens between
// processes import it, nothing else in this module does.
//
// Keys, under Options.Prefix:
//
//	<prefix><key>        JSON {"value":"…","expiry_ms":…,"lifetime_ms":…}; no
//	                     Redis TTL, the reader judges expiry (refresh tokens
//	                     never expire)
//	<prefix>lock:<key>   the refresh lock: SET NX PX with a random owner id,
//	                     released only by its owner (compare-and-delete)
package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/redisutil"
	"github.com/waybillkit/waybill/wechat"
)

// DefaultPrefix namespaces the keys when Options.Prefix is empty.
const DefaultPrefix = "waybill:wechat:"

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// Prefix is put before every key, so that several systems can share a
	// Redis. "" means DefaultPrefix.
	Prefix string
}

// Store is a wechat.TokenStore on Redis. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

var _ wechat.TokenStore = (*Store)(nil)

// New returns a Store using rdb, which the caller keeps and closes.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &Store{rdb: rdb, prefix: opts.Prefix}
}

type record struct {
	Value      string `json:"value"`
	ExpiryMS   int64  `json:"expiry_ms,omitempty"`   // Unix milliseconds; 0 = never
	LifetimeMS int64  `json:"lifetime_ms,omitempty"` // Token.Lifetime; 0 = unknown (records written before it existed)
}

// Load implements wechat.TokenStore.
func (s *Store) Load(ctx context.Context, key string) (wechat.Token, bool, error) {
	var r record
	ok, err := redisutil.GetJSON(ctx, s.rdb, s.prefix+key, &r)
	if errors.Is(err, redisutil.ErrUnreadable) {
		return wechat.Token{}, false, fmt.Errorf("redisstore: decode %s: %w", key, err)
	}
	if err != nil {
		return wechat.Token{}, false, fmt.Errorf("redisstore: get %s: %w", key, err)
	}
	if !ok {
		return wechat.Token{}, false, nil
	}
	tok := wechat.Token{Value: r.Value, Lifetime: time.Duration(r.LifetimeMS) * time.Millisecond}
	if r.ExpiryMS != 0 {
		tok.Expiry = time.UnixMilli(r.ExpiryMS)
	}
	return tok, true, nil
}

// Save implements wechat.TokenStore.
func (s *Store) Save(ctx context.Context, key string, tok wechat.Token) error {
	r := record{Value: tok.Value, LifetimeMS: tok.Lifetime.Milliseconds()}
	if !tok.Expiry.IsZero() {
		r.ExpiryMS = tok.Expiry.UnixMilli()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(ctx, s.prefix+key, b, 0).Err(); err != nil {
		return fmt.Errorf("redisstore: set %s: %w", key, err)
	}
	return nil
}

// TryLock implements wechat.TokenStore with SET NX PX.
func (s *Store) TryLock(ctx context.Context, key string, ttl time.Duration) (func(context.Context) error, bool, error) {
	release, ok, err := redisutil.Acquire(ctx, s.rdb, s.prefix+key, ttl)
	if err != nil {
		return nil, false, fmt.Errorf("redisstore: lock %s: %w", key, err)
	}
	if !ok {
		return nil, false, nil
	}
	return func(ctx context.Context) error {
		if err := release(ctx); err != nil {
			return fmt.Errorf("redisstore: unlock %s: %w", key, err)
		}
		return nil
	}, true, nil
}

// String shows the prefix, never a token.
func (s *Store) String() string { return "redisstore.Store{" + s.prefix + "}" }

// GoString is String.
func (s *Store) GoString() string { return s.String() }
