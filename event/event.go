// Package event defines the events waybill consumes and publishes: the
// order.shipped input (OrderShipped, its JSON schema, decoding and
// validation) and the waybill.traced output (WaybillTraced and its
// deterministic message UUID). The Handler imports it, and so does any
// producer or consumer that shares the schema with waybill: nothing in it
// depends on Kafka, Redis or the Handler.
package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/waybillkit/waybill/wechat"
)

// Default topic names: where each event lives unless configured otherwise.
const (
	// OrderShippedTopic is the input topic the merchant's systems publish to.
	OrderShippedTopic = "order.shipped"
	// WaybillTracedTopic is the output topic of traced waybills.
	WaybillTracedTopic = "waybill.traced"
)

// SchemaVersion is the version written into, and accepted from, the events
// this package defines. A consumer that sees a higher version should expect
// new fields, never changed meanings.
const SchemaVersion = 1

// OrderShipped is the input event, published by the merchant's systems when an
// order leaves the warehouse. Its JSON form is the order.shipped schema.
type OrderShipped struct {
	Version int `json:"version"`
	// OrderID identifies the order in the merchant's system. It keys the
	// output messages so that everything about one order stays on one
	// partition.
	OrderID string `json:"order_id"`
	// AppID is the mini program the order was placed in. Service providers
	// mix many merchants' appids in one topic.
	AppID string `json:"appid"`
	// OpenID is the buyer's openid under AppID.
	OpenID string `json:"openid"`
	// TransID is the WeChat Pay transaction id (usually starts with 420).
	// Optional, but WeChat asks for it when known.
	TransID string `json:"trans_id,omitempty"`
	// WaybillID is the carrier's tracking number.
	WaybillID string `json:"waybill_id"`
	// DeliveryID is the carrier's id from get_delivery_list, e.g. "SF".
	DeliveryID string `json:"delivery_id,omitempty"`
	// ReceiverPhone is required: some carriers look the waybill up by it.
	ReceiverPhone string `json:"receiver_phone"`
	// SenderPhone is optional.
	SenderPhone string `json:"sender_phone,omitempty"`
	// Goods is shown on the buyer's tracking card; at least one is required.
	Goods []Goods `json:"goods"`
	// OrderDetailPath is the mini program page the goods card opens; the
	// home page when empty.
	OrderDetailPath string `json:"order_detail_path,omitempty"`
	// ShippedAt is when the parcel left.
	ShippedAt time.Time `json:"shipped_at"`
}

// Goods is one line of an order as the buyer sees it.
type Goods struct {
	Name     string `json:"name"`
	ImageURL string `json:"image_url"`
	// Description is at most MaxGoodsDescRunes characters; WeChat shows the
	// name when it is empty.
	Description string `json:"description,omitempty"`
}

// TraceRequest converts the event to the body of a trace_waybill call.
func (e *OrderShipped) TraceRequest() *wechat.TraceWaybillRequest {
	goods := make([]wechat.Goods, len(e.Goods))
	for i, g := range e.Goods {
		goods[i] = wechat.Goods{GoodsName: g.Name, GoodsImgURL: g.ImageURL, GoodsDesc: g.Description}
	}
	return &wechat.TraceWaybillRequest{
		OpenID:          e.OpenID,
		ReceiverPhone:   e.ReceiverPhone,
		SenderPhone:     e.SenderPhone,
		WaybillID:       e.WaybillID,
		DeliveryID:      e.DeliveryID,
		TransID:         e.TransID,
		OrderDetailPath: e.OrderDetailPath,
		GoodsInfo:       wechat.GoodsInfo{DetailList: goods},
	}
}

// WaybillTraced is the output event: the buyer can now follow the parcel in
// the mini program with WaybillToken. Its JSON form is the waybill.traced
// schema.
type WaybillTraced struct {
	Version    int    `json:"version"`
	OrderID    string `json:"order_id"`
	AppID      string `json:"appid"`
	OpenID     string `json:"openid"`
	WaybillID  string `json:"waybill_id"`
	DeliveryID string `json:"delivery_id,omitempty"`
	// WaybillToken never expires; the mini program passes it to
	// requirePlugin("logisticsPlugin").openWaybillTracking.
	WaybillToken string    `json:"waybill_token"`
	TracedAt     time.Time `json:"traced_at"`
}

// tracedNamespace scopes the deterministic message UUIDs of waybill.traced.
var tracedNamespace = uuid.MustParse("6f1c3a52-9f5e-4b8e-a1d2-7c0e5b9d4a11")

// TracedMessageID is the UUID of the waybill.traced message for an order's
// waybill. It depends only on the input, so a redelivered order.shipped
// produces a message with the same UUID and downstream consumers can drop the
// duplicate.
func TracedMessageID(appid, orderID, waybillID, transID string) string {
	key := appid + "\x00" + orderID + "\x00" + waybillID + "\x00" + transID
	return uuid.NewSHA1(tracedNamespace, []byte(key)).String()
}

// DecodeFunc turns a consumed message into an OrderShipped. Users whose
// events have their own shape plug in a DecodeFunc instead of the order.shipped
// schema; the result is validated the same way. An error dead-letters the
// message with reason invalid_event.
type DecodeFunc func(msg *message.Message) (*OrderShipped, error)

// DecodeJSON is the default DecodeFunc: the order.shipped JSON schema.
// Unknown fields are ignored so that producers can add their own. A payload
// that is not valid UTF-8 is refused: JSON decoding would turn the bad bytes
// into U+FFFD, and the buyer's goods card would show them.
func DecodeJSON(msg *message.Message) (*OrderShipped, error) {
	if !utf8.Valid(msg.Payload) {
		return nil, errors.New("decode order.shipped: payload is not valid UTF-8")
	}
	var e OrderShipped
	if err := json.Unmarshal(msg.Payload, &e); err != nil {
		return nil, fmt.Errorf("decode order.shipped: %w", err)
	}
	if e.Version > SchemaVersion {
		// A newer minor addition is fine; a newer major is not ours to guess.
		return nil, fmt.Errorf("decode order.shipped: version %d is newer than %d", e.Version, SchemaVersion)
	}
	return &e, nil
}
