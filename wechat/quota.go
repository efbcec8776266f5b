package wechat

import "context"

// QuotaRequest is the body of openapi/quota/get.
type QuotaRequest struct {
	// CGIPath is the API path whose quota to report, e.g.
	// "/cgi-bin/express/delivery/open_msg/trace_waybill".
	CGIPath string `json:"cgi_path"`
}

// Quota is a path's daily quota.
type Quota struct {
	DailyLimit int64 `json:"daily_limit"`
	Used       int64 `json:"used"`
	Remain     int64 `json:"remain"`
}

// RateLimit is a path's short-window limit: CallCount calls per RefreshSecond.
type RateLimit struct {
	CallCount     int64 `json:"call_count"`
	RefreshSecond int64 `json:"refresh_second"`
}

// QuotaResponse is the answer of openapi/quota/get.
type QuotaResponse struct {
	Quota              Quota     `json:"quota"`
	RateLimit          RateLimit `json:"rate_limit"`
	ComponentRateLimit RateLimit `json:"component_rate_limit"` // for calls made by a third-party platform
}

// OpenMsgPath returns the CGIPath of an open_msg endpoint, e.g.
// OpenMsgPath("trace_waybill"), for GetQuota.
func OpenMsgPath(name string) string { return openMsgPath + name }

// GetQuota reports the remaining daily quota of one API path for appid, so an
// operator can see how close it is to 45009.
func (c *Client) GetQuota(ctx context.Context, appid string, req *QuotaRequest) (*QuotaResponse, error) {
	return call[QuotaResponse](ctx, c, appid, "/cgi-bin/openapi/quota/get", req)
}
