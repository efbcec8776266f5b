package wechattest

import (
	"errors"
	"fmt"
	"time"
)

// Config configures a Server. The zero value is ready to use and models
// WeChat's documented limits; every field says what its zero value means.
type Config struct {
	// TokenTTL is the lifetime of every access_token, component_access_token
	// and authorizer_access_token the sandbox issues. Zero means 7200s, as on
	// WeChat.
	TokenTTL time.Duration

	// TokenOverlap is how long a token issued by cgi-bin/token (or
	// api_authorizer_token) stays valid after a newer one was issued for the
	// same appid; past it the old token answers 40001. It is also the window
	// before expiry in which stable_token hands out a fresh token (the old one
	// living until its own expiry). Zero means 5 minutes.
	TokenOverlap time.Duration

	// RefreshTokenGrace is how long an authorizer_refresh_token keeps working
	// after api_authorizer_token rotated it; past it the old one answers 61023.
	// Zero means 5 minutes.
	RefreshTokenGrace time.Duration

	// AppDailyQuota is the number of calls one appid may make to one open_msg
	// path in one quota day before 45009. Zero means 100000; negative means no
	// limit.
	AppDailyQuota int

	// OpenIDDailyQuota is the number of calls carrying one openid that one
	// appid may make to the query plugin (trace_waybill, query_trace,
	// update_waybill_goods) in one quota day before 45009. Zero means 100;
	// negative means no limit.
	OpenIDDailyQuota int

	// FollowOpenIDDailyQuota is OpenIDDailyQuota for the message component
	// (follow_waybill, query_follow_trace, update_follow_waybill_goods).
	// Zero means 50; negative means no limit.
	FollowOpenIDDailyQuota int

	// MinuteLimit is the number of calls one appid may make to one open_msg
	// path within one calendar minute before 45011. Zero means no limit.
	MinuteLimit int

	// QuotaReset is the time of day, as an offset from midnight in
	// QuotaLocation, at which daily quotas start over. Zero means midnight.
	// It must be in [0, 24h).
	QuotaReset time.Duration

	// QuotaLocation is the time zone of QuotaReset. Nil means UTC+8 (China
	// Standard Time), the working assumption for WeChat's reset.
	QuotaLocation *time.Location

	// Now is the clock for token expiry, quota days and minutes, and Call.At.
	// Nil means time.Now. Tests pass a controllable clock to expire tokens
	// and cross quota resets without sleeping. Fault.Latency always uses
	// real time.
	Now func() time.Time

	// AutoRegister makes the sandbox accept any appid with any secret at the
	// token endpoints, registering it on first use. Apps added with AddApp
	// still have their secret checked. Handy for quick starts.
	AutoRegister bool

	// Seed seeds the random source that decides whether a Fault with a Rate
	// fires, so that a run can be repeated exactly. Zero means a fixed default
	// seed, so runs are deterministic unless a test asks otherwise.
	Seed uint64

	// Deliveries is the carrier list get_delivery_list answers with and
	// query_trace names carriers from. Nil means DefaultDeliveries().
	Deliveries []Delivery

	// OnCall, if not nil, is called after every answered request with a copy
	// of its record, outside the server's lock. The standalone command uses it
	// to print a line per call. It must be safe for concurrent use.
	OnCall func(Call)
}

// Validate reports whether cfg can be used; NewServer panics on an invalid
// Config, as httptest does on a server it cannot start.
func (cfg Config) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"TokenTTL", cfg.TokenTTL}, {"TokenOverlap", cfg.TokenOverlap}, {"RefreshTokenGrace", cfg.RefreshTokenGrace}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if cfg.MinuteLimit < 0 {
		errs = append(errs, fmt.Errorf("MinuteLimit %d is negative", cfg.MinuteLimit))
	}
	if cfg.QuotaReset < 0 || cfg.QuotaReset >= 24*time.Hour {
		errs = append(errs, fmt.Errorf("QuotaReset %v is outside [0, 24h)", cfg.QuotaReset))
	}
	for i, d := range cfg.Deliveries {
		if d.ID == "" {
			errs = append(errs, fmt.Errorf("Deliveries[%d] has no ID", i))
		}
	}
	return errors.Join(errs...)
}

// chinaStandardTime is UTC+8 without relying on the tz database being
// installed.
var chinaStandardTime = time.FixedZone("CST", 8*60*60)

func (cfg *Config) setDefaults() {
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 7200 * time.Second
	}
	if cfg.TokenOverlap == 0 {
		cfg.TokenOverlap = 5 * time.Minute
	}
	if cfg.RefreshTokenGrace == 0 {
		cfg.RefreshTokenGrace = 5 * time.Minute
	}
	if cfg.AppDailyQuota == 0 {
		cfg.AppDailyQuota = 100000
	}
	if cfg.OpenIDDailyQuota == 0 {
		cfg.OpenIDDailyQuota = 100
	}
	if cfg.FollowOpenIDDailyQuota == 0 {
		cfg.FollowOpenIDDailyQuota = 50
	}
	if cfg.QuotaLocation == nil {
		cfg.QuotaLocation = chinaStandardTime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Seed == 0 {
		cfg.Seed = 0x5EED
	}
	if cfg.Deliveries == nil {
		cfg.Deliveries = DefaultDeliveries()
	}
}
