package wechat

import (
	"context"
	"strconv"
	"strings"
)

// openMsgPath is the prefix of every endpoint of the family.
const openMsgPath = "/cgi-bin/express/delivery/open_msg/"

// Goods is one item shown on the waybill card.
type Goods struct {
	GoodsName   string `json:"goods_name"`           // required; up to 60 characters (unconfirmed limit)
	GoodsImgURL string `json:"goods_img_url"`        // required
	GoodsDesc   string `json:"goods_desc,omitempty"` // at most 40 characters; defaults to the name
}

// GoodsInfo lists the goods of a waybill.
type GoodsInfo struct {
	DetailList []Goods `json:"detail_list"`
}

// TraceWaybillRequest is the body of trace_waybill (and follow_waybill).
type TraceWaybillRequest struct {
	OpenID          string    `json:"openid"`                      // required: the buyer
	ReceiverPhone   string    `json:"receiver_phone"`              // required: some carriers find the waybill by it
	SenderPhone     string    `json:"sender_phone,omitempty"`      // optional
	WaybillID       string    `json:"waybill_id"`                  // required
	DeliveryID      string    `json:"delivery_id,omitempty"`       // carrier id from GetDeliveryList; recommended for small carriers
	TransID         string    `json:"trans_id,omitempty"`          // WeChat Pay transaction id; send it when known
	OrderDetailPath string    `json:"order_detail_path,omitempty"` // page the goods card opens; home page when empty
	GoodsInfo       GoodsInfo `json:"goods_info"`                  // required, non-empty
}

// TraceWaybillResponse is the answer of trace_waybill (and follow_waybill).
type TraceWaybillResponse struct {
	// WaybillToken never expires: store it and pass it to the mini program's
	// logistics plugin; do not create it again.
	WaybillToken string `json:"waybill_token"`
}

// TraceWaybill registers a waybill with the query plugin (查询组件) and returns
// the waybill_token the mini program opens it with. Calling it again for the
// same waybill returns the same token and does not change the goods shown; use
// UpdateWaybillGoods for that. An answer without a waybill_token is an error
// wrapping ErrNoWaybillToken.
func (c *Client) TraceWaybill(ctx context.Context, appid string, req *TraceWaybillRequest) (*TraceWaybillResponse, error) {
	return c.registerWaybill(ctx, appid, "trace_waybill", req)
}

// registerWaybill calls trace_waybill or follow_waybill. It fails an answer
// that says ok but carries no token: the token is the whole result, and a
// gateway may answer "{}" with HTTP 200.
func (c *Client) registerWaybill(ctx context.Context, appid, name string, req *TraceWaybillRequest) (*TraceWaybillResponse, error) {
	resp, err := call[TraceWaybillResponse](ctx, c, appid, openMsgPath+name, req)
	if err == nil && resp.WaybillToken == "" {
		return nil, &noWaybillTokenError{name}
	}
	return resp, err
}

// WaybillStatus is the state of a waybill as query_trace reports it.
type WaybillStatus int

// The waybill states (consistent across two SDKs; WeChat's page lists the same).
const (
	WaybillNotPickedUp    WaybillStatus = 0 // not found yet, or not picked up
	WaybillPickedUp       WaybillStatus = 1
	WaybillInTransit      WaybillStatus = 2
	WaybillOutForDelivery WaybillStatus = 3
	WaybillSigned         WaybillStatus = 4
	WaybillException      WaybillStatus = 5
	WaybillSignedByProxy  WaybillStatus = 6
)

var waybillStatusNames = [...]string{
	WaybillNotPickedUp:    "not_picked_up",
	WaybillPickedUp:       "picked_up",
	WaybillInTransit:      "in_transit",
	WaybillOutForDelivery: "out_for_delivery",
	WaybillSigned:         "signed",
	WaybillException:      "exception",
	WaybillSignedByProxy:  "signed_by_proxy",
}

// String returns the status's snake_case name, or "WaybillStatus(N)" for a
// value WeChat may add later.
func (s WaybillStatus) String() string {
	if s >= 0 && int(s) < len(waybillStatusNames) {
		return waybillStatusNames[s]
	}
	return "WaybillStatus(" + strconv.Itoa(int(s)) + ")"
}

// Final reports whether the waybill has been signed for (by the receiver or a
// proxy): nothing more will happen to it.
func (s WaybillStatus) Final() bool { return s == WaybillSigned || s == WaybillSignedByProxy }

// QueryTraceRequest is the body of query_trace (and query_follow_trace).
type QueryTraceRequest struct {
	WaybillToken string `json:"waybill_token"`    // required
	OpenID       string `json:"openid,omitempty"` // optional
}

// WaybillInfo is a waybill and its state.
type WaybillInfo struct {
	WaybillID string        `json:"waybill_id"`
	Status    WaybillStatus `json:"status"`
}

// ShopInfo is what the shop registered about the waybill.
type ShopInfo struct {
	GoodsInfo GoodsInfo `json:"goods_info"`
}

// Delivery is a carrier.
type Delivery struct {
	DeliveryID   string `json:"delivery_id"`   // e.g. "SF"
	DeliveryName string `json:"delivery_name"` // e.g. "顺丰"
}

// QueryTraceResponse is the answer of query_trace (and query_follow_trace).
type QueryTraceResponse struct {
	WaybillInfo  WaybillInfo `json:"waybill_info"`
	ShopInfo     ShopInfo    `json:"shop_info"`
	DeliveryInfo Delivery    `json:"delivery_info"`
}

// QueryTrace reports a waybill's state and goods by its waybill_token.
func (c *Client) QueryTrace(ctx context.Context, appid string, req *QueryTraceRequest) (*QueryTraceResponse, error) {
	return call[QueryTraceResponse](ctx, c, appid, openMsgPath+"query_trace", req)
}

// UpdateWaybillGoodsRequest is the body of update_waybill_goods (and
// update_follow_waybill_goods).
type UpdateWaybillGoodsRequest struct {
	WaybillToken string    `json:"waybill_token"`    // required
	OpenID       string    `json:"openid,omitempty"` // optional
	GoodsInfo    GoodsInfo `json:"goods_info"`       // required, non-empty
}

// UpdateWaybillGoods replaces the goods shown for a waybill.
func (c *Client) UpdateWaybillGoods(ctx context.Context, appid string, req *UpdateWaybillGoodsRequest) error {
	_, err := call[struct{}](ctx, c, appid, openMsgPath+"update_waybill_goods", req)
	return err
}

// GetDeliveryListResponse is the answer of get_delivery_list.
type GetDeliveryListResponse struct {
	DeliveryList []Delivery `json:"delivery_list"`
	Count        int        `json:"count"`
}

// GetDeliveryList lists the carriers (about 1,400) and their delivery_id.
func (c *Client) GetDeliveryList(ctx context.Context, appid string) (*GetDeliveryListResponse, error) {
	return call[GetDeliveryListResponse](ctx, c, appid, openMsgPath+"get_delivery_list", struct{}{})
}

// The message component (消息组件) takes the same shapes as the query plugin.
// Tokens of the two lines are not interchangeable.
type (
	FollowWaybillRequest            = TraceWaybillRequest
	FollowWaybillResponse           = TraceWaybillResponse
	QueryFollowTraceRequest         = QueryTraceRequest
	QueryFollowTraceResponse        = QueryTraceResponse
	UpdateFollowWaybillGoodsRequest = UpdateWaybillGoodsRequest
)

// FollowWaybill registers a waybill with the message component, which sends
// the buyer service notifications at pickup, out-for-delivery and signing.
// (One SDK marks the component withdrawn since 2023-05-31; WeChat's index
// still lists it.) An answer without a waybill_token is an error wrapping
// ErrNoWaybillToken.
func (c *Client) FollowWaybill(ctx context.Context, appid string, req *FollowWaybillRequest) (*FollowWaybillResponse, error) {
	return c.registerWaybill(ctx, appid, "follow_waybill", req)
}

// QueryFollowTrace is QueryTrace for a waybill registered with FollowWaybill.
func (c *Client) QueryFollowTrace(ctx context.Context, appid string, req *QueryFollowTraceRequest) (*QueryFollowTraceResponse, error) {
	return call[QueryFollowTraceResponse](ctx, c, appid, openMsgPath+"query_follow_trace", req)
}

// UpdateFollowWaybillGoods is UpdateWaybillGoods for a waybill registered with
// FollowWaybill.
func (c *Client) UpdateFollowWaybillGoods(ctx context.Context, appid string, req *UpdateFollowWaybillGoodsRequest) error {
	_, err := call[struct{}](ctx, c, appid, openMsgPath+"update_follow_waybill_goods", req)
	return err
}

// OpenMsg (open_openmsg) opens the message component for the merchant appid.
// Provider only: the token must be the merchant's authorizer_access_token
// (see ComponentTokenSource); errors 933000–933004 come from here.
func (c *Client) OpenMsg(ctx context.Context, appid string) error {
	_, err := call[struct{}](ctx, c, appid, openMsgPath+"open_openmsg", struct{}{})
	return err
}

// OpenQueryPlugin (open_query_plugin) opens the query plugin for the merchant
// appid. Provider only, like OpenMsg.
func (c *Client) OpenQueryPlugin(ctx context.Context, appid string) error {
	_, err := call[struct{}](ctx, c, appid, openMsgPath+"open_query_plugin", struct{}{})
	return err
}

// call is the one path every endpoint method takes. The endpoint's name in
// errors is its path after the open_msg prefix ("trace_waybill") or after
// /cgi-bin/ ("openapi/quota/get").
func call[Resp any](ctx context.Context, c *Client, appid, path string, req any) (*Resp, error) {
	name := strings.TrimPrefix(strings.TrimPrefix(path, openMsgPath), "/cgi-bin/")
	out := new(Resp)
	if err := c.post(ctx, appid, name, path, req, out); err != nil {
		return nil, err
	}
	return out, nil
}
