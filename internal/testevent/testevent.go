// Package testevent builds the valid order.shipped event that tests of
// every package start from, and change one field of to make it invalid.
// Only tests import it.
package testevent

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/waybillkit/waybill/event"
)

// Valid returns an event that passes Validate, with Chinese text and
// HTML-special characters in its goods so that encoding is exercised.
func Valid(orderID, waybillID string) *event.OrderShipped {
	return &event.OrderShipped{
		Version: 1, OrderID: orderID, AppID: "wxapp1", OpenID: "o-buyer-1",
		TransID: "4200001234202611260000000001", WaybillID: waybillID, DeliveryID: "SF",
		ReceiverPhone: "13800138000", SenderPhone: "02012345678",
		Goods:     []event.Goods{{Name: "云南普洱茶 <特级> & 礼盒", ImageURL: "https://img.example.cn/tea.jpg", Description: "十年陈香"}},
		ShippedAt: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
	}
}

// JSON is the order.shipped payload of Valid("order-x", "SF100") after mod.
func JSON(tb testing.TB, mod func(*event.OrderShipped)) []byte {
	tb.Helper()
	ev := Valid("order-x", "SF100")
	mod(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
