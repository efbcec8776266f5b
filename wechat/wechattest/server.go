package wechattest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// Server is a WeChat API sandbox listening on a loopback address. All its
// methods are safe for concurrent use, also while requests are being served.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:38211", without a trailing
	// slash. A client uses it where it would use https://api.weixin.qq.com.
	URL string

	// Listener is where the server listens. NewUnstartedServer opens it on
	// 127.0.0.1 with a free port; replace it before Start to serve elsewhere.
	Listener net.Listener

	cfg     Config
	hs      *http.Server
	closing chan struct{}

	mu       sync.Mutex
	started  bool
	closed   bool
	inflight sync.WaitGroup
	rng      *rand.Rand
	calls    []*Call
	faults   []*armedFault

	apps        map[string]*app         // by appid
	creds       map[string]*credential  // by token string
	components  map[string]*component   // by component appid
	refresh     map[string]*refreshCred // by authorizer_refresh_token
	waybills    map[waybillKey]*waybill
	wbTokens    map[string]*waybill // by waybill_token
	scripts     map[appWaybill][]int
	unknown     map[appWaybill]bool
	usage       map[usageKey]*usage
	openidUsage map[openidKey]*dayCount
}

// NewServer starts and returns a sandbox on 127.0.0.1 with a free port. The
// caller must Close it. It panics if cfg is invalid or no port can be had,
// like httptest.NewServer.
func NewServer(cfg Config) *Server {
	s := NewUnstartedServer(cfg)
	s.Start()
	return s
}

// NewUnstartedServer returns a sandbox that is not yet serving, so that its
// Listener can be replaced (the standalone command listens on a given
// address). Call Start, then Close.
func NewUnstartedServer(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("wechattest: invalid Config: %v", err))
	}
	cfg.setDefaults()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("wechattest: failed to listen on a loopback port: %v", err))
	}
	s := &Server{
		Listener:    l,
		cfg:         cfg,
		closing:     make(chan struct{}),
		rng:         rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9E3779B97F4A7C15)),
		apps:        map[string]*app{},
		creds:       map[string]*credential{},
		components:  map[string]*component{},
		refresh:     map[string]*refreshCred{},
		waybills:    map[waybillKey]*waybill{},
		wbTokens:    map[string]*waybill{},
		scripts:     map[appWaybill][]int{},
		unknown:     map[appWaybill]bool{},
		usage:       map[usageKey]*usage{},
		openidUsage: map[openidKey]*dayCount{},
	}
	s.hs = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Start starts serving on s.Listener. It panics if called twice.
func (s *Server) Start() {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		panic("wechattest: Server already started")
	}
	s.started = true
	s.mu.Unlock()
	s.URL = "http://" + s.Listener.Addr().String()
	go func() { _ = s.hs.Serve(s.Listener) }()
}

// Close shuts the server down: it stops listening, ends pending Fault
// latencies, closes connections and waits for handlers to return. Recorded
// calls stay readable. Close may be called more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.closing)
	started := s.started
	s.mu.Unlock()
	if started {
		_ = s.hs.Close()
	} else {
		_ = s.Listener.Close()
	}
	s.inflight.Wait()
}

// now is the configured clock.
func (s *Server) now() time.Time { return s.cfg.Now() }

// reply is what a handler answers: a JSON body with HTTP 200, the way WeChat
// answers both successes and in-band errors.
type reply struct {
	errcode int
	body    any
}

// fail answers an in-band WeChat error with the usual errmsg.
func fail(errcode int) reply {
	return reply{errcode: errcode, body: errBody{errcode, Errmsg(errcode)}}
}

// failHint answers an in-band error whose errmsg carries a hint, as WeChat
// does for 47001 ("data format error hint: [...]").
func failHint(errcode int, hint string) reply {
	return reply{errcode: errcode, body: errBody{errcode, Errmsg(errcode) + " hint: [" + hint + "]"}}
}

type errBody struct {
	Errcode int    `json:"errcode"`
	Errmsg  string `json:"errmsg"`
}

// okBody is embedded first in success answers of the open_msg family.
var okBody = errBody{0, "ok"}

// handler serves one endpoint. It runs without the server lock held and takes
// it as it needs.
type handler func(s *Server, r *http.Request, c *Call) reply

// route returns the handler for a URL path, nil for an unknown one.
func route(p string) handler {
	switch {
	case p == "/cgi-bin/stable_token":
		return (*Server).stableToken
	case p == "/cgi-bin/token":
		return (*Server).cgiToken
	case p == "/cgi-bin/component/api_component_token":
		return (*Server).componentToken
	case p == "/cgi-bin/component/api_authorizer_token":
		return (*Server).authorizerToken
	case p == "/cgi-bin/openapi/quota/get":
		return (*Server).quotaGet
	case strings.HasPrefix(p, openMsgPrefix):
		return openMsgHandlers[strings.TrimPrefix(p, openMsgPrefix)]
	}
	return nil
}

const openMsgPrefix = "/cgi-bin/express/delivery/open_msg/"

// enter registers an in-flight request unless the server is closing; the
// lock orders inflight.Add before Close's Wait.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.inflight.Add(1)
	return true
}

// maxBody bounds what the sandbox reads of a request body.
const maxBody = 1 << 20

// ServeHTTP serves the WeChat endpoints. It is exported so that the sandbox
// can also be mounted in another mux or httptest server.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		http.Error(w, "server closed", http.StatusServiceUnavailable)
		return
	}
	defer s.inflight.Done()

	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody))
	c := &Call{
		Endpoint: path.Base(r.URL.Path),
		Path:     r.URL.Path,
		Method:   r.Method,
		Query:    r.URL.Query(),
		Header:   r.Header.Clone(),
		Body:     body,
		At:       s.now(),
	}
	s.mu.Lock()
	c.AppID = s.resolveAppID(c)
	s.calls = append(s.calls, c)
	s.mu.Unlock()

	if f := s.pickFault(c); f != nil {
		if done := s.applyFault(w, r, c, f); done {
			return
		}
	}

	h := route(r.URL.Path)
	if h == nil {
		s.finish(c, http.StatusNotFound, 0, false)
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	rep := h(s, r, c)
	s.finish(c, http.StatusOK, rep.errcode, false)
	writeJSON(w, http.StatusOK, rep.body)
}

// finish records how a call was answered and notifies Config.OnCall.
func (s *Server) finish(c *Call, status, errcode int, fault bool) {
	s.mu.Lock()
	c.HTTPStatus, c.Errcode, c.Fault = status, errcode, fault
	cp := *c
	s.mu.Unlock()
	if s.cfg.OnCall != nil {
		s.cfg.OnCall(cp)
	}
}

// writeJSON answers with WeChat's content type and raw UTF-8: Chinese text and
// <>& go out as they came in, unescaped.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(bytes.TrimRight(buf.Bytes(), "\n"))
}

// decodeBody decodes a POST body into v the way WeChat reads it: a request
// whose Content-Type is not JSON (or that is not a POST) is read as an empty
// body, which is why WeChat answers such calls with a misleading
// "40003 invalid openid". It returns 0 or a 47001 reply.
func decodeBody(r *http.Request, c *Call, v any) (reply, bool) {
	if r.Method != http.MethodPost || !isJSON(r.Header.Get("Content-Type")) || len(bytes.TrimSpace(c.Body)) == 0 {
		return reply{}, true
	}
	if err := json.Unmarshal(c.Body, v); err != nil {
		return failHint(47001, "invalid JSON: "+jsonErrorHint(err)), false
	}
	return reply{}, true
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// jsonErrorHint shortens a decoding error to what a developer needs.
func jsonErrorHint(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %s must be %s", te.Field, te.Type)
	}
	return err.Error()
}
