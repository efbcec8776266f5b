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
			"verify-ticket-redis-key": c.TicketRedisKey, "provider-listen": c.Listen} {
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

	mu        sync.Mutex
	last      map[string]string // source → the last ticket taken from it
	staleSeen map[string]bool   // source → a stale ticket was reported
}

func newProvider(cfg componentConfig, tokens *tokenRoutes, rdb *redis.Client, log *slog.Logger) (*provider, error) {
	p := &provider{cfg: cfg, tokens: tokens, rdb: rdb, log: log, last: map[string]string{}, staleSeen: map[string]bool{}}
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

// start serves the endpoint and polls the ticket sources until ctx ends,
// and waits for a usable ticket (in this process's sources or in the
// shared store) when some merchant needs one: at most TicketWait. Without
// the wait every authorizer's first events would be dead-lettered for a
// ticket that was on its way.
func (p *provider) start(ctx context.Context, wg *sync.WaitGroup, needTicket bool) error {
	if p.ln != nil {
		srv := &http.Server{Handler: p.handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelWarn)}
		wg.Go(func() {
			if err := srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.log.Error("provider endpoint stopped", "err", err)
			}
		})
		context.AfterFunc(ctx, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		p.log.Info("provider endpoint listening", "addr", p.ln.Addr().String())
	}
	if p.cfg.TicketFile != "" || p.cfg.TicketRedisKey != "" {
		p.poll(ctx)
		wg.Go(func() {
			t := time.NewTicker(ticketPoll)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					p.poll(ctx)
				}
			}
		})
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

// poll reads the ticket file and Redis key and stores a ticket that is new.
func (p *provider) poll(ctx context.Context) {
	if f := p.cfg.TicketFile; f != "" {
		ticket, err := p.readTicketFile(f)
		p.take(ctx, "file", ticket, err)
	}
	if k := p.cfg.TicketRedisKey; k != "" && p.rdb != nil {
		rctx, cancel := context.WithTimeout(ctx, redisTimeout)
		ticket, err := p.rdb.Get(rctx, k).Result()
		cancel()
		if errors.Is(err, redis.Nil) {
			ticket, err = "", nil
		}
		p.take(ctx, "redis", strings.TrimSpace(ticket), err)
	}
}

// readTicketFile returns the file's ticket, "" when the file is missing or
// older than a ticket lives (the callback has stopped writing it).
func (p *provider) readTicketFile(path string) (string, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if age := time.Since(st.ModTime()); age >= wechat.VerifyTicketTTL {
		p.mu.Lock()
		seen := p.staleSeen["file"]
		p.staleSeen["file"] = true
		p.mu.Unlock()
		if !seen {
			p.log.Warn("the component_verify_ticket file is older than a ticket lives; is the platform's callback writing it?",
				"file", path, "age", age.Round(time.Minute))
		}
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// take stores ticket from source unless it is the one last taken from there.
func (p *provider) take(ctx context.Context, source, ticket string, err error) {
	if err != nil {
		p.log.Warn("reading the component_verify_ticket", "source", source, "err", err)
		return
	}
	p.mu.Lock()
	same := ticket == "" || p.last[source] == ticket
	p.mu.Unlock()
	if same {
		return
	}
	if err := p.tokens.component().SetVerifyTicket(ctx, ticket); err != nil {
		p.log.Warn("storing the component_verify_ticket", "source", source, "err", err)
		return
	}
	p.mu.Lock()
	p.last[source] = ticket
	p.staleSeen[source] = false
	p.mu.Unlock()
	p.log.Info("component_verify_ticket stored", "source", source)
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
