package wechattest

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
	"time"
)

// credKind tells what a token string authorizes.
type credKind int

const (
	kindAccess     credKind = iota // access_token of an app (stable_token or cgi-bin/token)
	kindAuthorizer                 // authorizer_access_token: an access_token for a merchant, held by a platform
	kindComponent                  // component_access_token of a third-party platform
)

// credential is the state of one issued token.
type credential struct {
	kind    credKind
	appid   string
	expires time.Time
	// deadAt, when not zero, is the instant from which the token answers
	// 40001 because a newer one replaced it.
	deadAt time.Time
}

// app is an appid the sandbox knows.
type app struct {
	secret    string
	anySecret bool   // registered by Config.AutoRegister
	stable    string // current stable_token token
	latest    string // latest cgi-bin/token (or authorizer) token

	component string // for an authorizer: the platform it authorized
	perm45    bool   // for an authorizer: logistics permission set granted
}

// AddApp registers appid with secret, so that the token endpoints accept this
// pair. Adding an appid again replaces its secret and keeps its tokens.
func (s *Server) AddApp(appid, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appLocked(appid)
	a.secret, a.anySecret = secret, false
}

// appLocked returns the app for appid, creating it. s.mu must be held.
func (s *Server) appLocked(appid string) *app {
	a, ok := s.apps[appid]
	if !ok {
		a = &app{}
		s.apps[appid] = a
	}
	return a
}

// newSecretString returns a random token-like string of WeChat's alphabet.
func newSecretString(prefix string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// issueLocked creates a token of kind for appid valid for Config.TokenTTL.
func (s *Server) issueLocked(kind credKind, appid string, now time.Time) string {
	tok := newSecretString([...]string{"86_", "87_", "88_"}[kind], 96)
	s.creds[tok] = &credential{kind: kind, appid: appid, expires: now.Add(s.cfg.TokenTTL)}
	return tok
}

// rotateLocked issues a new token and lets the one in *latest die after
// Config.TokenOverlap: cgi-bin/token's rule, also used for platform tokens.
func (s *Server) rotateLocked(latest *string, kind credKind, appid string, now time.Time) string {
	if old, ok := s.creds[*latest]; ok {
		dieLocked(old, now.Add(s.cfg.TokenOverlap))
	}
	*latest = s.issueLocked(kind, appid, now)
	return *latest
}

// dieLocked makes c invalid from at on, unless it already dies sooner.
func dieLocked(c *credential, at time.Time) {
	if c.deadAt.IsZero() || at.Before(c.deadAt) {
		c.deadAt = at
	}
}

// tokenErrcodeLocked returns the errcode for using token at now with one of kinds:
// 0 when it is valid, 41001 when missing, 40014 when malformed, 40001 when
// unknown, of the wrong kind or superseded, 42001 when expired.
func (s *Server) tokenErrcodeLocked(token string, now time.Time, kinds ...credKind) (*credential, int) {
	if token == "" {
		return nil, 41001
	}
	if strings.IndexFunc(token, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) >= 0 {
		return nil, 40014
	}
	c, ok := s.creds[token]
	if !ok {
		return nil, 40001
	}
	kindOK := false
	for _, k := range kinds {
		kindOK = kindOK || c.kind == k
	}
	switch {
	case !kindOK:
		return nil, 40001
	case !now.Before(c.expires):
		return c, 42001
	case !c.deadAt.IsZero() && !now.Before(c.deadAt):
		return c, 40001
	}
	return c, 0
}

// checkToken checks the token in query parameter param of r; see
// tokenErrcodeLocked. The credential's kind and appid never change, so the
// caller may read them without the lock.
func (s *Server) checkToken(r *http.Request, param string, now time.Time, kinds ...credKind) (*credential, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenErrcodeLocked(r.URL.Query().Get(param), now, kinds...)
}

// resolveAppID tells which appid a call acts for. s.mu must be held.
func (s *Server) resolveAppID(c *Call) string {
	switch c.Path {
	case "/cgi-bin/token":
		return c.Query.Get("appid")
	case "/cgi-bin/stable_token":
		return c.Field("appid")
	case "/cgi-bin/component/api_component_token":
		return c.Field("component_appid")
	}
	for _, p := range []string{"access_token", "component_access_token"} {
		if cr, ok := s.creds[c.Query.Get(p)]; ok {
			return cr.appid
		}
	}
	return ""
}

// authenticateLocked checks appid and secret at a token endpoint, registering
// the app under Config.AutoRegister. It returns 0 or the errcode to answer.
func (s *Server) authenticateLocked(grantType, appid, secret string) (*app, int) {
	switch {
	case grantType != "client_credential":
		return nil, 40002
	case appid == "":
		return nil, 41002
	case secret == "":
		return nil, 41004
	}
	a, ok := s.apps[appid]
	if !ok || a.component != "" && a.secret == "" {
		if !s.cfg.AutoRegister {
			return nil, 40013
		}
		a = s.appLocked(appid)
		a.anySecret = true
	}
	if !a.anySecret && a.secret != secret {
		return nil, 40125
	}
	return a, 0
}

type tokenBody struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// stableToken serves POST cgi-bin/stable_token: the same token while it is
// valid and more than TokenOverlap from expiry; a fresh one in that last
// window (the old one living to its expiry); force_refresh issues a fresh one
// and kills the old at once.
func (s *Server) stableToken(r *http.Request, c *Call) reply {
	var req struct {
		GrantType    string `json:"grant_type"`
		AppID        string `json:"appid"`
		Secret       string `json:"secret"`
		ForceRefresh bool   `json:"force_refresh"`
	}
	if rep, ok := decodeBody(r, c, &req); !ok {
		return rep
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, code := s.authenticateLocked(req.GrantType, req.AppID, req.Secret)
	if code != 0 {
		return fail(code)
	}
	cur, ok := s.creds[a.stable]
	switch {
	case ok && req.ForceRefresh:
		dieLocked(cur, now)
	case ok && cur.deadAt.IsZero() && cur.expires.Sub(now) > s.cfg.TokenOverlap:
		return reply{body: tokenBody{a.stable, int(cur.expires.Sub(now) / time.Second)}}
	}
	a.stable = s.issueLocked(kindAccess, req.AppID, now)
	return reply{body: tokenBody{a.stable, int(s.cfg.TokenTTL / time.Second)}}
}

// cgiToken serves GET cgi-bin/token: a new token on every call; the previous
// one dies after TokenOverlap.
func (s *Server) cgiToken(r *http.Request, c *Call) reply {
	q := r.URL.Query()
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, code := s.authenticateLocked(q.Get("grant_type"), q.Get("appid"), q.Get("secret"))
	if code != 0 {
		return fail(code)
	}
	tok := s.rotateLocked(&a.latest, kindAccess, q.Get("appid"), now)
	return reply{body: tokenBody{tok, int(s.cfg.TokenTTL / time.Second)}}
}
