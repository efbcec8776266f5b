package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

// liveSecrets are the app secrets the token source reads, replaced whole
// on reload: a new merchant's secret, or a rotated one, is used from the
// next token fetch on.
type liveSecrets struct {
	p atomic.Pointer[wechat.StaticSecrets]
}

func newLiveSecrets(s wechat.StaticSecrets) *liveSecrets {
	l := &liveSecrets{}
	l.p.Store(&s)
	return l
}

// Secret implements wechat.Secrets.
func (l *liveSecrets) Secret(ctx context.Context, appid string) (string, error) {
	return (*l.p.Load()).Secret(ctx, appid)
}

// String never shows a secret.
func (l *liveSecrets) String() string { return (*l.p.Load()).String() }

// reload applies what a new configuration may change while events flow:
// the merchants, how each one's token is obtained, their secrets (the
// platform's too, and the provider endpoint's bearer token), configured
// refresh tokens, and every limit. Everything else (Kafka, topics,
// parking, Redis, WeChat's address, timings) needs a restart; reload names
// such changes and keeps running as it was. An invalid configuration
// changes nothing and is returned as the reason.
func (s *service) reload(next config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	secrets, kinds, err := next.merchantTable()
	if err != nil {
		return err
	}
	if err := next.limiterConfig(nil).Validate(); err != nil {
		return err
	}
	restart := restartNeeded(s.applied, next)
	cur := s.tokens.p.Load()
	if want := next.Component.AppID; want != s.applied.Component.AppID {
		// The platform's appid names its tokens in the store: a restart.
		for appid, kind := range kinds {
			if kind == tokenAuthorizer && cur.kinds[appid] != tokenAuthorizer {
				return fmt.Errorf("merchant %s: token: authorizer under -component-appid %q, which a reload cannot change from %q; restart",
					appid, want, s.applied.Component.AppID)
			}
		}
		next.Component = s.applied.Component
	}
	if next.Component.Listen != s.applied.Component.Listen || next.Component.Auth == "" {
		// The endpoint keeps its address until a restart, and its token with it.
		next.Component.Auth = s.applied.Component.Auth
	}
	table, err := s.routeTable(next, kinds, cur)
	if err != nil {
		return err
	}
	if s.provider != nil {
		// Before the new routes: a new authorizer's first call must find
		// its refresh token, and a ticket.
		ctx := context.Background()
		if err := s.provider.seed(ctx, next.Merchants); err != nil {
			return fmt.Errorf("storing a configured refresh token: %w", err)
		}
		if countKind(kinds, tokenAuthorizer) > countKind(cur.kinds, tokenAuthorizer) {
			if _, err := table.component.VerifyTicketExpiry(ctx); err != nil {
				return fmt.Errorf("new authorizers, but %w: their events would be dead-lettered; wire the ticket push first", err)
			}
		}
	}
	if err := errors.Join(
		s.limiter.SetLimits(next.Limits, next.AppLimits),
		s.goodsLimiter.SetLimits(next.Limits, next.AppLimits),
	); err != nil {
		return err // validated above: not reached
	}
	old := *s.secrets.p.Load()
	s.secrets.p.Store(&secrets)
	s.tokens.p.Store(table)
	if s.admin != nil {
		s.admin.metrics.Declare(sortedKeys(kinds)...)
	}
	if s.provider != nil {
		s.provider.auth.Store(&next.Component.Auth)
	}

	var added, rotated, removed, tokens, limits []string
	for appid, kind := range kinds {
		switch was, ok := cur.kinds[appid]; {
		case !ok:
			added = append(added, appid)
		case was != kind:
			tokens = append(tokens, appid)
		case old[appid] != secrets[appid]:
			rotated = append(rotated, appid)
		}
	}
	for appid := range cur.kinds {
		if _, ok := kinds[appid]; !ok {
			removed = append(removed, appid)
		}
	}
	if table.component != cur.component && cur.component != nil {
		rotated = append(rotated, next.Component.AppID)
	}
	for _, appid := range slices.Sorted(maps.Keys(unionKeys(s.applied.AppLimits, next.AppLimits))) {
		if s.applied.AppLimits[appid] != next.AppLimits[appid] {
			limits = append(limits, appid)
		}
	}
	if s.applied.Limits != next.Limits {
		limits = append(limits, "defaults")
	}
	for _, l := range [][]string{added, rotated, removed, tokens} {
		sort.Strings(l)
	}
	s.log.Info("configuration reloaded", "merchants_added", added, "secrets_rotated", rotated,
		"merchants_removed", removed, "limits_changed", limits, "restart_needed", restart,
		"token_api_changed", tokens)
	// Only what was applied: a setting that needs a restart is named again
	// on the next reload, until the restart.
	s.applied.Limits, s.applied.AppLimits = next.Limits, next.AppLimits
	s.applied.Component.Secret, s.applied.Component.Auth = next.Component.Secret, next.Component.Auth
	return nil
}

func unionKeys(a, b map[string]ratelimit.Limits) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// restartNeeded names the settings that changed but take effect only on
// a restart.
func restartNeeded(cur, next config) []string {
	var out []string
	check := func(name string, changed bool) {
		if changed {
			out = append(out, name)
		}
	}
	ck, nk := cur.Kafka, next.Kafka
	check("kafka", !slices.Equal(ck.Brokers, nk.Brokers) || ck.ConsumerGroup != nk.ConsumerGroup || ck.SASL != nk.SASL ||
		ck.TLS != nk.TLS || ck.DisableIdempotence != nk.DisableIdempotence)
	check("topics", cur.InputTopic != next.InputTopic || cur.TracedTopic != next.TracedTopic || cur.DeadLetterTopic != next.DeadLetterTopic)
	check("parking", (cur.Parking == nil) != (next.Parking == nil) ||
		(cur.Parking != nil && (!slices.Equal(cur.Parking.Tiers, next.Parking.Tiers) || cur.Parking.TopicPrefix != next.Parking.TopicPrefix)))
	check("redis", cur.Redis != next.Redis || cur.RedisPrefix != next.RedisPrefix)
	check("wechat-url", cur.WeChatURL != next.WeChatURL)
	check("timings", cur.ClaimTTL != next.ClaimTTL || cur.StatsInterval != next.StatsInterval || cur.ShutdownTimeout != next.ShutdownTimeout)
	cc, nc := cur.Component, next.Component
	check("component", cc.AppID != nc.AppID || cc.TicketFile != nc.TicketFile || cc.TicketRedisKey != nc.TicketRedisKey ||
		cc.Listen != nc.Listen || cc.TicketWait != nc.TicketWait)
	check("log", cur.LogLevel != next.LogLevel || cur.LogFormat != next.LogFormat)
	return out
}

// reloadOnHUP reparses the configuration (the same arguments, the
// environment and the config file as it is now) on every signal from hup
// and applies it with reload, until ctx ends; a configuration that does not
// parse or apply is logged with its reason and the running one stays.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, s *service, args []string, getenv func(string) string, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			var why strings.Builder
			next, err := parseConfig(args, getenv, &why)
			if err == nil {
				err = s.reload(next)
			} else {
				err = fmt.Errorf("%s", strings.TrimSpace(strings.TrimPrefix(why.String(), "waybill: ")))
			}
			if err != nil {
				log.Error("reload rejected; the running configuration stays", "err", err)
			}
		}
	}
}
