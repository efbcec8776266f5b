package wechat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// TokenSource gives access tokens per appid. Implementations are safe for
// concurrent use.
type TokenSource interface {
	// Token returns a token for appid that is not known to be expired.
	Token(ctx context.Context, appid string) (string, error)
	// Refresh is called after WeChat rejected `stale` (40001/40014/42001). It returns a fresh token, but
	// fetches only if the current token is still `stale` (someone else may have refreshed already).
	Refresh(ctx context.Context, appid, stale string) (string, error)
}

// Secrets gives the AppSecret of an appid, for the token endpoints.
type Secrets interface {
	Secret(ctx context.Context, appid string) (string, error)
}

// ErrUnknownAppID is returned when a Secrets or StaticTokenSource has nothing
// for an appid. [ClassOf] classifies it as ClassConfiguration.
var ErrUnknownAppID = errors.New("wechat: unknown appid")

// StaticSecrets maps appid to AppSecret. Its String and GoString show the
// appids only.
type StaticSecrets map[string]string

// Secret returns the secret of appid, or an error wrapping ErrUnknownAppID.
func (s StaticSecrets) Secret(_ context.Context, appid string) (string, error) {
	if v, ok := s[appid]; ok && v != "" {
		return v, nil
	}
	return "", fmt.Errorf("wechat: no secret for appid %q: %w", appid, ErrUnknownAppID)
}

// String lists the appids, never the secrets.
func (s StaticSecrets) String() string { return "wechat.StaticSecrets" + redactedKeys(s) }

// GoString is String: %#v must not print secrets either.
func (s StaticSecrets) GoString() string { return s.String() }

func redactedKeys(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	for i, k := range keys {
		keys[i] = k + ":[redacted]"
	}
	return "{" + strings.Join(keys, " ") + "}"
}

// StaticTokenSource maps appid to an access token obtained elsewhere (another
// service owns the refresh). It cannot refresh: when WeChat rejects a token,
// Refresh fails with ErrNotRefreshable. Its String and GoString show the
// appids only.
type StaticTokenSource map[string]string

// Token returns the token of appid, or an error wrapping ErrUnknownAppID.
func (s StaticTokenSource) Token(_ context.Context, appid string) (string, error) {
	if v, ok := s[appid]; ok && v != "" {
		return v, nil
	}
	return "", fmt.Errorf("wechat: no static token for appid %q: %w", appid, ErrUnknownAppID)
}

// Refresh fails with ErrNotRefreshable: a static token cannot be renewed here.
func (s StaticTokenSource) Refresh(_ context.Context, appid, _ string) (string, error) {
	return "", fmt.Errorf("wechat: static token of appid %q was rejected: %w", appid, ErrNotRefreshable)
}

// String lists the appids, never the tokens.
func (s StaticTokenSource) String() string { return "wechat.StaticTokenSource" + redactedKeys(s) }

// GoString is String.
func (s StaticTokenSource) GoString() string { return s.String() }

// Token is a stored credential: an access token, a ticket or a refresh token.
// Its String and GoString never show Value.
type Token struct {
	Value  string
	Expiry time.Time // when WeChat stops accepting it; zero = does not expire
	// Lifetime is the expires_in WeChat answered with the token; zero when
	// unknown. It bounds how early the token is renewed (see
	// StableTokenConfig.Early), so a TokenStore should keep it; one that
	// drops it gets renewal the full Early before expiry.
	Lifetime time.Duration
}

// String shows the expiry, never the value.
func (t Token) String() string {
	if t.Expiry.IsZero() {
		return "wechat.Token{[redacted]}"
	}
	return "wechat.Token{[redacted] expires " + t.Expiry.UTC().Format(time.RFC3339) + "}"
}

// GoString is String.
func (t Token) GoString() string { return t.String() }

// TokenStore keeps tokens where every process sharing an appid sees them, and
// offers a lock so that one process refreshes while the others wait. The
// token sources name their keys ("token:wx123", "component_verify_ticket:...");
// a store may prefix them. Implementations must be safe for concurrent use.
//
// MemoryStore serves one process; package redisstore serves many.
type TokenStore interface {
	// Load returns the token under key; ok is false when there is none.
	Load(ctx context.Context, key string) (tok Token, ok bool, err error)
	// Save stores tok under key, replacing what was there.
	Save(ctx context.Context, key string, tok Token) error
	// TryLock takes the lock named key for at most ttl without waiting; ok is
	// false when someone else holds it. unlock releases it if this caller
	// still holds it (the ttl may have passed and another caller taken it).
	TryLock(ctx context.Context, key string, ttl time.Duration) (unlock func(context.Context) error, ok bool, err error)
}

// MemoryStore is a TokenStore for one process. The zero value is ready to use.
type MemoryStore struct {
	mu     sync.Mutex
	tokens map[string]Token
	locks  map[string]memLock
	nextID uint64
}

type memLock struct {
	id    uint64
	until time.Time
}

// Load implements TokenStore.
func (m *MemoryStore) Load(_ context.Context, key string) (Token, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[key]
	return t, ok, nil
}

// Save implements TokenStore.
func (m *MemoryStore) Save(_ context.Context, key string, tok Token) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tokens == nil {
		m.tokens = make(map[string]Token)
	}
	m.tokens[key] = tok
	return nil
}

// TryLock implements TokenStore. The ttl runs on the real clock (time.Now).
func (m *MemoryStore) TryLock(_ context.Context, key string, ttl time.Duration) (func(context.Context) error, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if l, held := m.locks[key]; held && now.Before(l.until) {
		return nil, false, nil
	}
	if m.locks == nil {
		m.locks = make(map[string]memLock)
	}
	m.nextID++
	id := m.nextID
	m.locks[key] = memLock{id: id, until: now.Add(ttl)}
	return func(context.Context) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.locks[key].id == id {
			delete(m.locks, key)
		}
		return nil
	}, true, nil
}

// String shows the keys held, never the tokens.
func (m *MemoryStore) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fmt.Sprintf("wechat.MemoryStore{%d tokens}", len(m.tokens))
}

// GoString is String.
func (m *MemoryStore) GoString() string { return m.String() }

// Defaults of the token caches.
const (
	DefaultEarly   = time.Minute      // renew this long before expiry, at most a fifth of the lifetime
	DefaultLockTTL = 30 * time.Second // longest a fetch may hold the refresh lock
	minPoll        = 10 * time.Millisecond
	maxPoll        = 500 * time.Millisecond
)

// cache is the one algorithm behind every fetching token source: serve from the
// store while fresh; one in-flight fetch per key in this process; a store lock
// so that one process fetches; fetch only if the stored token is still stale.
type cache struct {
	store   TokenStore
	early   time.Duration
	lockTTL time.Duration
	now     func() time.Time
	log     *slog.Logger

	mu      sync.Mutex
	flights map[string]*flight
	local   map[string]Token // last token seen per key, so a shared store is read once per lifetime
}

type flight struct {
	done chan struct{}
	tok  Token
	err  error
}

// cacheSettings are the knobs every fetching source's config carries.
type cacheSettings struct {
	store   TokenStore
	early   time.Duration
	lockTTL time.Duration
	now     func() time.Time
	log     *slog.Logger
}

func (s cacheSettings) validate() error {
	var errs []error
	if s.early < 0 || s.early >= 5*time.Minute {
		errs = append(errs, fmt.Errorf("Early %v: want 0 (default) up to under 5m, the least lifetime WeChat hands out", s.early))
	}
	if s.lockTTL < 0 {
		errs = append(errs, fmt.Errorf("LockTTL %v: want >= 0", s.lockTTL))
	}
	return errors.Join(errs...)
}

func newCache(s cacheSettings) *cache {
	c := &cache{store: s.store, early: s.early, lockTTL: s.lockTTL, now: s.now, log: s.log,
		flights: make(map[string]*flight), local: make(map[string]Token)}
	if c.store == nil {
		c.store = new(MemoryStore)
	}
	if c.early == 0 {
		c.early = DefaultEarly
	}
	if c.lockTTL == 0 {
		c.lockTTL = DefaultLockTTL
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// earlyFraction bounds the early renewal by the token's lifetime: a token
// living less than 5*Early would otherwise be stale on arrival and fetched
// again on every call.
const earlyFraction = 5

// usable reports whether tok may be handed out instead of stale.
func (c *cache) usable(tok Token, stale string) bool {
	early := c.early
	if tok.Lifetime > 0 {
		early = min(early, tok.Lifetime/earlyFraction)
	}
	return tok.Value != "" && tok.Value != stale &&
		(tok.Expiry.IsZero() || c.now().Before(tok.Expiry.Add(-early)))
}

// get returns a usable token for key, other than stale, fetching one with
// fetch if needed. It looks in this process's copy, then in the store.
// Callers in this process asking for the same key and stale share one
// flight. The flight is detached from any one caller's cancellation (others
// wait on it) and bounded by the lock TTL.
//
// The local copy is safe even when another process renews the token: all
// processes see the same expiry and renew at the same moment, and a token
// renewed out of turn is rejected by WeChat, which makes the client call
// Refresh, which always reads the store.
func (c *cache) get(ctx context.Context, key, stale string, fetch func(context.Context) (Token, error)) (string, error) {
	c.mu.Lock()
	tok, ok := c.local[key]
	c.mu.Unlock()
	if stale == "" && ok && c.usable(tok, "") {
		return tok.Value, nil
	}
	if tok, ok, err := c.store.Load(ctx, key); err == nil && ok && c.usable(tok, stale) {
		c.remember(key, tok)
		return tok.Value, nil
	}
	fk := key + "\x00" + stale
	c.mu.Lock()
	f := c.flights[fk]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		c.flights[fk] = f
		go func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.lockTTL)
			f.tok, f.err = c.refresh(fctx, key, stale, fetch)
			cancel()
			if f.err == nil {
				c.remember(key, f.tok)
			}
			c.mu.Lock()
			delete(c.flights, fk)
			c.mu.Unlock()
			close(f.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.tok.Value, f.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *cache) remember(key string, tok Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.local[key] = tok
}

// refresh takes the store's lock for key and fetches, unless the store turns
// out to hold a usable token. While another process holds the lock it polls
// the store with a backoff.
func (c *cache) refresh(ctx context.Context, key, stale string, fetch func(context.Context) (Token, error)) (tok Token, err error) {
	err = c.locked(ctx, key, func(ctx context.Context) (bool, error) {
		t, ok, err := c.store.Load(ctx, key)
		if err != nil {
			return false, fmt.Errorf("load %s: %w", key, err)
		}
		if ok && c.usable(t, stale) {
			tok = t
			return true, nil
		}
		return false, nil
	}, func(ctx context.Context) error {
		var err error
		tok, err = c.fetchLocked(ctx, key, stale, fetch)
		return err
	})
	return tok, err
}

// locked runs f holding the store's lock for key (the lock every fetch of
// key takes), polling with a backoff while another process holds it, for
// at most the lock TTL. Before each attempt, done (if not nil) may find the
// work done by the holder, and end it.
func (c *cache) locked(ctx context.Context, key string, done func(context.Context) (bool, error), f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.lockTTL)
	defer cancel()
	wait := minPoll
	for {
		if done != nil {
			if ok, err := done(ctx); ok || err != nil {
				return err
			}
		}
		unlock, got, err := c.store.TryLock(ctx, "lock:"+key, c.lockTTL)
		if err != nil {
			return fmt.Errorf("lock %s: %w", key, err)
		}
		if got {
			err := f(ctx)
			if uerr := unlock(context.WithoutCancel(ctx)); uerr != nil {
				c.log.LogAttrs(ctx, slog.LevelWarn, "wechat: releasing token lock failed",
					slog.String("key", key), slog.String("error", uerr.Error()))
			}
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for another process to release %s: %w", key, ctx.Err())
		}
		wait = min(2*wait, maxPoll)
	}
}

// fetchLocked runs under the store's lock: it checks once more (the previous
// holder may have just saved) and fetches only if the token is still stale.
func (c *cache) fetchLocked(ctx context.Context, key, stale string, fetch func(context.Context) (Token, error)) (Token, error) {
	if tok, ok, err := c.store.Load(ctx, key); err == nil && ok && c.usable(tok, stale) {
		return tok, nil
	}
	tok, err := fetch(ctx)
	if err != nil {
		return Token{}, err
	}
	c.log.LogAttrs(ctx, slog.LevelInfo, "wechat: fetched token",
		slog.String("key", key), slog.Time("expiry", tok.Expiry))
	if err := c.store.Save(ctx, key, tok); err != nil {
		// The token is good; only sharing it failed. Others will fetch their own.
		c.log.LogAttrs(ctx, slog.LevelWarn, "wechat: saving token failed",
			slog.String("key", key), slog.String("error", err.Error()))
	}
	return tok, nil
}
