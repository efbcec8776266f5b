package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/wait"
	"github.com/waybillkit/waybill/wechat"
)

// ticketPoll is how often the ticket file or Redis key is read again.
// WeChat pushes a new component_verify_ticket every 10 minutes, each valid
// 12 hours, so a new one is picked up long before the old one matters.
const ticketPoll = 30 * time.Second

// maxProviderBody bounds what the provider endpoint reads of a request: a
// ticket or a refresh token is well under 1 KiB.
const maxProviderBody = 4 << 10

// componentConfig is the third-party platform the service acts as, for the
// merchants whose token is "authorizer".
type componentConfig struct {
	AppID      string
	SecretFile string
	Secret     string // read from SecretFile; never logged
	// Where the component_verify_ticket comes from: any of a file the
	// platform's callback writes, a Redis key it sets, or the service's own
	// provider endpoint it calls. A process with none of them relies on
	// another sharing its Redis.
	TicketFile, TicketRedisKey string
	// Listen is the provider endpoint's address; AuthFile holds the bearer
	// token its callers must send.
	Listen, AuthFile string
	Auth             string // read from AuthFile; never logged
	// TicketWait bounds how long the service waits at start for a ticket
	// before it fails.
	TicketWait time.Duration
}

// providerFlags are the flags of provider mode.
type providerFlags struct{ c componentConfig }

func (p *providerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.c.AppID, "component-appid", "", "`appid` of the third-party platform, for merchants with token: authorizer")
	fs.StringVar(&p.c.SecretFile, "component-secret-file", "", "`file` holding the platform's appsecret")
	fs.StringVar(&p.c.TicketFile, "verify-ticket-file", "", "`file` the platform's callback writes each component_verify_ticket to (read every 30s)")
	fs.StringVar(&p.c.TicketRedisKey, "verify-ticket-redis-key", "", "Redis `key` the platform's callback SETs to each component_verify_ticket (read every 30s; needs -redis)")
	fs.StringVar(&p.c.Listen, "provider-listen", "", "`address` of the provider endpoint that takes tickets and refresh tokens over HTTP (PUT /component_verify_ticket, PUT /authorizers/{appid}/refresh_token)")
	fs.StringVar(&p.c.AuthFile, "provider-auth-file", "", "`file` holding the bearer token the provider endpoint's callers must send")
	fs.DurationVar(&p.c.TicketWait, "verify-ticket-wait", 20*time.Minute, "how long to wait at start for a component_verify_ticket (two of WeChat's pushes) before failing")
}

// apply reads the referenced secrets and checks the combination; hasRedis
// says whether -redis is set, hasAuthorizers whether any merchant needs the
// platform.
func (p *providerFlags) apply(hasRedis, hasAuthorizers bool) (componentConfig, error) {
	c := p.c
	var errs []error
	if c.AppID == "" {
		if hasAuthorizers {
			errs = append(errs, errors.New("merchants with token: authorizer need -component-appid"))
		}
		for name, v := range map[string]string{"component-secret-file": c.SecretFile, "verify-ticket-file": c.TicketFile,
			"verify-ticket-redis-key": c.TicketRedisKey, "provider-listen": c.Listen, "provider-auth-file": c.AuthFile} {
			if v != "" {
				errs = append(errs, fmt.Errorf("-%s needs -component-appid", name))
			}
		}
		return c, errors.Join(errs...)
	}
	read := func(by, flagName, path string) string {
		if path == "" {
			errs = append(errs, fmt.Errorf("-%s needs -%s", by, flagName))
			return ""
		}
		v, err := resolveRef(path, "", nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("-%s: %w", flagName, err))
		}
		return v
	}
	c.Secret = read("component-appid", "component-secret-file", c.SecretFile)
	if c.Listen != "" || c.AuthFile != "" {
		if c.Listen == "" {
			errs = append(errs, errors.New("-provider-auth-file needs -provider-listen"))
		}
		c.Auth = read("provider-listen", "provider-auth-file", c.AuthFile)
	}
	if hasAuthorizers && !hasRedis {
		// In memory, a restart would start again from the configured refresh
		// tokens, dead since their first rotation.
		errs = append(errs, errors.New("merchants with token: authorizer need -redis, which keeps their rotated refresh tokens"))
	}
	if c.TicketRedisKey != "" && !hasRedis {
		errs = append(errs, errors.New("-verify-ticket-redis-key needs -redis"))
	}
	if c.TicketFile == "" && c.TicketRedisKey == "" && c.Listen == "" && !hasRedis {
		errs = append(errs, errors.New("-component-appid needs a component_verify_ticket: -verify-ticket-file, -verify-ticket-redis-key or -provider-listen (or -redis shared with a process that has one)"))
	}
	if c.TicketWait <= 0 {
		errs = append(errs, fmt.Errorf("-verify-ticket-wait %v must be positive", c.TicketWait))
	}
	return c, errors.Join(errs...)
}

// tokenRoutes is the service's wechat.TokenSource: each merchant's token
// from the source its configuration names. A reload replaces the table
// whole, so a call sees one configuration or the next, never a mix.
type tokenRoutes struct {
	stable, plain wechat.TokenSource // by app secret: stable_token, cgi-bin/token
	p             atomic.Pointer[routeTable]
}

type routeTable struct {
	kinds     map[string]string // appid → tokenStable, tokenPlain or tokenAuthorizer
	component *wechat.ComponentTokenSource
	secret    string // the component secret the component was built with
}

func (r *tokenRoutes) source(appid string) (wechat.TokenSource, error) {
	t := r.p.Load()
	switch t.kinds[appid] {
	case tokenStable:
		return r.stable, nil
	case tokenPlain:
		return r.plain, nil
	case tokenAuthorizer:
		return t.component, nil
	}
	return nil, fmt.Errorf("no merchant %q configured: %w", appid, wechat.ErrUnknownAppID)
}

// Token implements wechat.TokenSource.
func (r *tokenRoutes) Token(ctx context.Context, appid string) (string, error) {
	src, err := r.source(appid)
	if err != nil {
		return "", err
	}
	return src.Token(ctx, appid)
}

// Refresh implements wechat.TokenSource.
func (r *tokenRoutes) Refresh(ctx context.Context, appid, stale string) (string, error) {
	src, err := r.source(appid)
	if err != nil {
		return "", err
	}
	return src.Refresh(ctx, appid, stale)
}

// component is the platform's token source now; nil without one.
func (r *tokenRoutes) component() *wechat.ComponentTokenSource { return r.p.Load().component }

// String lists no secret.
func (r *tokenRoutes) String() string {
	return fmt.Sprintf("tokenRoutes{%d merchants}", len(r.p.Load().kinds))
}

// provider feeds the platform's token source what WeChat pushes to the
// platform: the component_verify_ticket from a file, a Redis key or the
// provider endpoint, and refresh tokens from the endpoint.
type provider struct {
	cfg    componentConfig
	tokens *tokenRoutes
	rdb    *redis.Client // nil without -redis
	log    *slog.Logger
	auth   atomic.Pointer[string] // the endpoint's bearer token; a reload may rotate it
	ln     net.Listener           // the endpoint's, bound at build so a taken port fails the start

	// stop ends the endpoint and the polls and waits for them; set by start.
	stop func()

	mu     sync.Mutex
	warned map[string]bool // a warning said once per source until it clears
}

func newProvider(cfg componentConfig, tokens *tokenRoutes, rdb *redis.Client, log *slog.Logger) (*provider, error) {
	p := &provider{cfg: cfg, tokens: tokens, rdb: rdb, log: log, warned: map[string]bool{}, stop: func() {}}
	p.auth.Store(&cfg.Auth)
	if cfg.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("-provider-listen: %w", err)
		}
		p.ln = ln
	}
	return p, nil
}

// start serves the endpoint and polls the ticket sources until stop, and
// waits for a usable ticket (in this process's sources or in the shared
// store) when some merchant needs one: at most TicketWait, or until ctx
// ends. Without the wait every authorizer's first events would be
// dead-lettered for a ticket that was on its way. The endpoint and polls
// outlive ctx (a signal): the service calls stop once it has stopped
// using the store, before closing it.
func (p *provider) start(ctx context.Context, needTicket bool) error {
	bg, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p.stop = func() {
		cancel()
		wg.Wait()
	}
	if p.ln != nil {
		srv := &http.Server{Handler: p.handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelWarn)}
		wg.Go(func() {
			if err := srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.log.Error("provider endpoint stopped", "err", err)
			}
		})
		wg.Go(func() {
			<-bg.Done()
			// Requests in flight finish (each is bounded by the timeouts above).
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		p.log.Info("provider endpoint listening", "addr", p.ln.Addr().String())
	}
	if p.cfg.TicketFile != "" || p.cfg.TicketRedisKey != "" {
		p.poll(bg)
		wg.Go(func() { wait.Every(bg, ticketPoll, func() { p.poll(bg) }) })
	}
	if !needTicket {
		return nil
	}
	return p.awaitTicket(ctx)
}

// awaitTicket waits until the platform's source has a ticket, checking every
// second (the shared store, so that a ticket another process took counts).
func (p *provider) awaitTicket(ctx context.Context) error {
	deadline := time.Now().Add(p.cfg.TicketWait)
	said := false
	endpoint := p.cfg.Listen
	if p.ln != nil {
		endpoint = p.ln.Addr().String()
	}
	for {
		_, err := p.tokens.component().VerifyTicketExpiry(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, wechat.ErrNoVerifyTicket) {
			p.log.Warn("checking the component_verify_ticket", "err", err)
		}
		if !said {
			p.log.Info("waiting for a component_verify_ticket before consuming", "wait", p.cfg.TicketWait,
				"file", p.cfg.TicketFile, "redis_key", p.cfg.TicketRedisKey, "endpoint", endpoint)
			said = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no component_verify_ticket within -verify-ticket-wait %v: wire the platform's ticket push to -verify-ticket-file, -verify-ticket-redis-key or -provider-listen", p.cfg.TicketWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// poll reads the ticket file and Redis key and stores a ticket newer than
// the stored one, with the age it has: the file's modification time, the
// key's remaining TTL. A ticket without a known age is not used, since
// one re-stamped as new on every start would hide a callback that stopped.
func (p *provider) poll(ctx context.Context) {
	if f := p.cfg.TicketFile; f != "" {
		ticket, pushed, err := readTicketFile(f)
		p.take(ctx, "file", ticket, pushed, err)
	}
	if k := p.cfg.TicketRedisKey; k != "" && p.rdb != nil {
		ticket, pushed, err := p.readTicketKey(ctx, k)
		p.take(ctx, "redis", ticket, pushed, err)
	}
}

// errTicketAge is a ticket source whose ticket has no known age or is older
// than a ticket lives.
var errTicketAge = errors.New("ticket")

// readTicketFile returns the file's ticket and when it was written; ""
// when the file is missing.
func readTicketFile(path string) (string, time.Time, error) {
	// One open file: the content and the time are the same file's, even
	// when the callback renames a new one into place meanwhile.
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", time.Time{}, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", time.Time{}, err
	}
	return strings.TrimSpace(string(b)), st.ModTime(), nil
}

// readTicketKey returns the key's ticket and when it was pushed, told by
// its TTL: the callback sets it with EX 43200 (the ticket's 12 hours).
func (p *provider) readTicketKey(ctx context.Context, key string) (string, time.Time, error) {
	rctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := p.rdb.Pipelined(rctx, func(pl redis.Pipeliner) error {
		get, ttl = pl.Get(rctx, key), pl.TTL(rctx, key)
		return nil
	})
	if errors.Is(err, redis.Nil) || errors.Is(get.Err(), redis.Nil) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, err
	}
	left := ttl.Val()
	if left <= 0 || left > wechat.VerifyTicketTTL {
		return "", time.Time{}, fmt.Errorf("%w in Redis key %s has no expiry (or one beyond 12 h) to tell its age: SET it with EX 43200", errTicketAge, key)
	}
	return strings.TrimSpace(get.Val()), time.Now().Add(left - wechat.VerifyTicketTTL), nil
}

// take stores ticket from source, pushed at pushed, unless the store
// holds it or a later one; a failure is logged once until it clears.
func (p *provider) take(ctx context.Context, source, ticket string, pushed time.Time, err error) {
	if err == nil && ticket != "" {
		var stored bool
		stored, err = p.tokens.component().SetVerifyTicketAt(ctx, ticket, pushed)
		if stored {
			p.log.Info("component_verify_ticket stored", "source", source, "pushed", pushed.Round(time.Second))
		}
	}
	p.mu.Lock()
	warned := p.warned[source]
	p.warned[source] = err != nil
	p.mu.Unlock()
	if err != nil && !warned {
		p.log.Warn("component_verify_ticket not taken; is the platform's callback writing it?", "source", source, "err", err)
	}
}

// seed stores the configured refresh token of each authorizer merchant
// that has none stored yet.
func (p *provider) seed(ctx context.Context, merchants []merchant) error {
	comp := p.tokens.component()
	var errs []error
	for _, m := range merchants {
		if m.Token != tokenAuthorizer || m.RefreshToken == "" {
			continue
		}
		stored, err := comp.SeedRefreshToken(ctx, m.AppID, m.RefreshToken)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("merchant %s: %w", m.AppID, err))
		case stored:
			p.log.Info("authorizer_refresh_token stored from the configuration", "appid", m.AppID)
		default:
			p.log.Debug("authorizer_refresh_token already stored (rotated since); the configured one is not used", "appid", m.AppID)
		}
	}
	return errors.Join(errs...)
}

// handler is the provider endpoint: the platform's callback, having
// decrypted WeChat's push, hands over what it carried.
//
//	PUT /component_verify_ticket            body: the ticket
//	PUT /authorizers/{appid}/refresh_token  body: the merchant's new authorizer_refresh_token
//
// Each needs "Authorization: Bearer <the -provider-auth-file token>" and
// answers 204 once the value is in the token store.
func (p *provider) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /component_verify_ticket", func(w http.ResponseWriter, r *http.Request) {
		ticket, ok := p.body(w, r)
		if !ok {
			return
		}
		if err := p.tokens.component().SetVerifyTicket(r.Context(), ticket); err != nil {
			p.log.Warn("storing the component_verify_ticket", "source", "endpoint", "err", err)
			http.Error(w, "cannot store the ticket", http.StatusServiceUnavailable)
			return
		}
		p.log.Info("component_verify_ticket stored", "source", "endpoint")
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /authorizers/{appid}/refresh_token", func(w http.ResponseWriter, r *http.Request) {
		appid := r.PathValue("appid")
		token, ok := p.body(w, r)
		if !ok {
			return
		}
		if p.tokens.p.Load().kinds[appid] != tokenAuthorizer {
			// Kept nowhere else: say so rather than lose it. Add the merchant
			// with token: authorizer first (a reload), then send it again.
			http.Error(w, "no merchant "+appid+" with token: authorizer is configured", http.StatusNotFound)
			return
		}
		if err := p.tokens.component().SetRefreshToken(r.Context(), appid, token); err != nil {
			p.log.Warn("storing an authorizer_refresh_token", "appid", appid, "err", err)
			http.Error(w, "cannot store the refresh token", http.StatusServiceUnavailable)
			return
		}
		p.log.Info("authorizer_refresh_token stored", "appid", appid, "source", "endpoint")
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// body checks the caller's bearer token and reads the one value a request
// carries; on failure it has answered.
func (p *provider) body(w http.ResponseWriter, r *http.Request) (string, bool) {
	want := "Bearer " + *p.auth.Load()
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
		p.log.Warn("provider endpoint: request without the right bearer token", "remote", r.RemoteAddr, "path", r.URL.Path)
		w.Header().Set("WWW-Authenticate", `Bearer realm="waybill"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return "", false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxProviderBody))
	v := strings.TrimSpace(string(b))
	switch {
	case err != nil:
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return "", false
	case v == "":
		http.Error(w, "empty body: send the value as the body", http.StatusBadRequest)
		return "", false
	}
	return v, true
}

// String names the platform, never its secret or the endpoint's token, so
// that a config printed whole (%v) shows neither.
func (c componentConfig) String() string {
	return fmt.Sprintf("component{appid:%s ticket_file:%s ticket_redis_key:%s listen:%s secret:[redacted] auth:[redacted]}",
		c.AppID, c.TicketFile, c.TicketRedisKey, c.Listen)
}

// GoString is String: %#v must not print secrets either.
func (c componentConfig) GoString() string { return c.String() }
