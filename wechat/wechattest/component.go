package wechattest

import (
	"net/http"
	"time"
)

// component is a third-party platform (第三方平台) the sandbox knows.
type component struct {
	secret string
	ticket string // "" accepts any component_verify_ticket
	latest string // latest component_access_token
}

// refreshCred is the state of one authorizer_refresh_token.
type refreshCred struct {
	component  string
	authorizer string
	deadAt     time.Time // zero while it is the current one
}

// AddComponent registers a third-party platform, so that
// api_component_token accepts componentAppID with secret and verifyTicket
// (the component_verify_ticket WeChat would push; "" accepts any ticket).
func (s *Server) AddComponent(componentAppID, secret, verifyTicket string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.components[componentAppID]
	if !ok {
		c = &component{}
		s.components[componentAppID] = c
	}
	c.secret, c.ticket = secret, verifyTicket
}

// AddAuthorizer records that merchant authorizerAppID authorized platform
// componentAppID, with refreshToken as its authorizer_refresh_token and the
// logistics permission set (45) granted. The platform must have been added
// with AddComponent first, or AddAuthorizer panics.
func (s *Server) AddAuthorizer(componentAppID, authorizerAppID, refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.components[componentAppID]; !ok {
		panic("wechattest: AddAuthorizer for unknown component " + componentAppID)
	}
	a := s.appLocked(authorizerAppID)
	a.component, a.perm45 = componentAppID, true
	for _, r := range s.refresh {
		if r.authorizer == authorizerAppID && r.deadAt.IsZero() {
			r.deadAt = s.now()
		}
	}
	s.refresh[refreshToken] = &refreshCred{component: componentAppID, authorizer: authorizerAppID}
}

// authorizerMayTrace reports whether an authorizer holds permission set 45.
func (s *Server) authorizerMayTrace(appid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[appid]
	return ok && a.perm45
}

// SetLogisticsPermission grants or withdraws the logistics permission set
// (45) of an authorizer; without it, open_msg calls with its
// authorizer_access_token answer 61007.
func (s *Server) SetLogisticsPermission(authorizerAppID string, granted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appLocked(authorizerAppID).perm45 = granted
}

// RefreshToken returns the current authorizer_refresh_token of an authorizer,
// "" if it has none: what a platform should have saved.
func (s *Server) RefreshToken(authorizerAppID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tok, r := range s.refresh {
		if r.authorizer == authorizerAppID && r.deadAt.IsZero() {
			return tok
		}
	}
	return ""
}

type componentTokenBody struct {
	ComponentAccessToken string `json:"component_access_token"`
	ExpiresIn            int    `json:"expires_in"`
}

// componentToken serves POST cgi-bin/component/api_component_token.
func (s *Server) componentToken(r *http.Request, c *Call) reply {
	var req struct {
		AppID  string `json:"component_appid"`
		Secret string `json:"component_appsecret"`
		Ticket string `json:"component_verify_ticket"`
	}
	if rep, ok := decodeBody(r, c, &req); !ok {
		return rep
	}
	switch {
	case req.AppID == "":
		return failHint(47001, "component_appid is empty")
	case req.Secret == "":
		return fail(41004)
	case req.Ticket == "":
		return failHint(47001, "component_verify_ticket is empty")
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	comp, ok := s.components[req.AppID]
	switch {
	case !ok:
		return fail(40013)
	case comp.secret != req.Secret:
		return fail(40125)
	case comp.ticket != "" && comp.ticket != req.Ticket:
		return fail(61006)
	}
	tok := s.rotateLocked(&comp.latest, kindComponent, req.AppID, now)
	return reply{body: componentTokenBody{tok, int(s.cfg.TokenTTL / time.Second)}}
}

type authorizerTokenBody struct {
	AuthorizerAccessToken  string `json:"authorizer_access_token"`
	ExpiresIn              int    `json:"expires_in"`
	AuthorizerRefreshToken string `json:"authorizer_refresh_token"`
}

// authorizerToken serves POST cgi-bin/component/api_authorizer_token: a new
// authorizer_access_token (the previous one dying after TokenOverlap) and a
// new authorizer_refresh_token; every older refresh token dies after
// RefreshTokenGrace, then answers 61023.
func (s *Server) authorizerToken(r *http.Request, c *Call) reply {
	var req struct {
		ComponentAppID  string `json:"component_appid"`
		AuthorizerAppID string `json:"authorizer_appid"`
		RefreshToken    string `json:"authorizer_refresh_token"`
	}
	now := s.now()
	cr, code := s.checkToken(r, "component_access_token", now, kindComponent)
	if code != 0 {
		return fail(code)
	}
	if rep, ok := decodeBody(r, c, &req); !ok {
		return rep
	}
	switch {
	case req.ComponentAppID == "" || req.AuthorizerAppID == "" || req.RefreshToken == "":
		return failHint(47001, "component_appid, authorizer_appid and authorizer_refresh_token are required")
	case req.ComponentAppID != cr.appid:
		return fail(40013)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rc, ok := s.refresh[req.RefreshToken]
	if !ok || rc.component != req.ComponentAppID || rc.authorizer != req.AuthorizerAppID ||
		!rc.deadAt.IsZero() && !now.Before(rc.deadAt) {
		return fail(61023)
	}
	graceEnd := now.Add(s.cfg.RefreshTokenGrace)
	for _, other := range s.refresh {
		if other.authorizer == req.AuthorizerAppID && (other.deadAt.IsZero() || graceEnd.Before(other.deadAt)) {
			other.deadAt = graceEnd
		}
	}
	newRefresh := newSecretString("refreshtoken@@@", 32)
	s.refresh[newRefresh] = &refreshCred{component: req.ComponentAppID, authorizer: req.AuthorizerAppID}
	a := s.appLocked(req.AuthorizerAppID)
	tok := s.rotateLocked(&a.latest, kindAuthorizer, req.AuthorizerAppID, now)
	return reply{body: authorizerTokenBody{tok, int(s.cfg.TokenTTL / time.Second), newRefresh}}
}

type quotaBody struct {
	errBody
	Quota struct {
		DailyLimit int `json:"daily_limit"`
		Used       int `json:"used"`
		Remain     int `json:"remain"`
	} `json:"quota"`
}

// quotaGet serves POST cgi-bin/openapi/quota/get for the open_msg paths.
func (s *Server) quotaGet(r *http.Request, c *Call) reply {
	now := s.now()
	cr, code := s.checkToken(r, "access_token", now, kindAccess, kindAuthorizer)
	if code != 0 {
		return fail(code)
	}
	var req struct {
		CgiPath string `json:"cgi_path"`
	}
	if rep, ok := decodeBody(r, c, &req); !ok {
		return rep
	}
	if req.CgiPath == "" {
		return failHint(47001, "cgi_path is empty")
	}
	if len(req.CgiPath) <= len(openMsgPrefix) || req.CgiPath[:len(openMsgPrefix)] != openMsgPrefix ||
		openMsgHandlers[req.CgiPath[len(openMsgPrefix):]] == nil {
		return fail(76021)
	}
	s.mu.Lock()
	used := s.quotaUsedLocked(cr.appid, req.CgiPath, now)
	s.mu.Unlock()
	var b quotaBody
	b.errBody = okBody
	b.Quota.DailyLimit = max(s.cfg.AppDailyQuota, 0)
	b.Quota.Used = used
	b.Quota.Remain = max(s.cfg.AppDailyQuota-used, 0)
	return reply{body: b}
}
