package event

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxGoodsDescRunes is WeChat's limit on goods_desc: 40 characters, counted
// as characters (runes), not bytes — 40 Chinese characters are 120 bytes.
const MaxGoodsDescRunes = 40

// Bounds waybill sets where WeChat documents none, far above any real value
// (an openid is 28 characters, a waybill number about 20), so that a
// runaway field is caught before it costs a call.
const (
	MaxIDRunes    = 128  // order_id, appid, openid, trans_id, waybill_id, delivery_id, phones
	MaxTextRunes  = 1024 // goods name, order_detail_path
	MaxURLBytes   = 2048 // goods image_url
	MaxGoodsItems = 100  // goods lines
)

// FieldProblem is one reason an event is invalid.
type FieldProblem struct {
	Field   string // JSON path in the order.shipped schema, e.g. "goods[1].description"
	Problem string // what is wrong; never the field's value, which may be personal data
}

// ValidationError reports every problem found in an event, so a producer can
// fix them all at once. An event that fails validation is dead-lettered with
// reason invalid_event before WeChat is called, saving the buyer's 100 calls a
// day.
type ValidationError struct {
	Problems []FieldProblem
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Field + ": " + p.Problem
	}
	return "invalid order.shipped: " + strings.Join(parts, "; ")
}

// Validate checks what WeChat would reject, without calling it. It returns
// nil or a *ValidationError.
func (e *OrderShipped) Validate() error {
	var v ValidationError
	required := func(field, value string) {
		if strings.TrimSpace(value) == "" {
			v.Problems = append(v.Problems, FieldProblem{field, "required"})
		}
	}
	required("order_id", e.OrderID)
	required("appid", e.AppID)
	required("openid", e.OpenID)
	required("waybill_id", e.WaybillID)
	required("receiver_phone", e.ReceiverPhone)
	bounded := func(field, value string, limit int) {
		switch {
		case !utf8.ValidString(value):
			// A custom Decode can hand over bytes that JSON decoding would
			// have turned into U+FFFD; neither belongs on a buyer's card.
			v.Problems = append(v.Problems, FieldProblem{field, "not valid UTF-8"})
		case utf8.RuneCountInString(value) > limit:
			v.Problems = append(v.Problems, FieldProblem{field, fmt.Sprintf("%d characters, at most %d", utf8.RuneCountInString(value), limit)})
		}
	}
	for _, f := range [...]struct {
		name, value string
	}{
		{"order_id", e.OrderID}, {"appid", e.AppID}, {"openid", e.OpenID}, {"trans_id", e.TransID},
		{"waybill_id", e.WaybillID}, {"delivery_id", e.DeliveryID},
		{"receiver_phone", e.ReceiverPhone}, {"sender_phone", e.SenderPhone},
	} {
		bounded(f.name, f.value, MaxIDRunes)
	}
	bounded("order_detail_path", e.OrderDetailPath, MaxTextRunes)
	if len(e.Goods) == 0 {
		v.Problems = append(v.Problems, FieldProblem{"goods", "at least one item required"})
	}
	if len(e.Goods) > MaxGoodsItems {
		v.Problems = append(v.Problems, FieldProblem{"goods", fmt.Sprintf("%d items, at most %d", len(e.Goods), MaxGoodsItems)})
	}
	for i, g := range e.Goods {
		required(fmt.Sprintf("goods[%d].name", i), g.Name)
		required(fmt.Sprintf("goods[%d].image_url", i), g.ImageURL)
		bounded(fmt.Sprintf("goods[%d].name", i), g.Name, MaxTextRunes)
		bounded(fmt.Sprintf("goods[%d].description", i), g.Description, MaxGoodsDescRunes)
		if !utf8.ValidString(g.ImageURL) {
			v.Problems = append(v.Problems, FieldProblem{fmt.Sprintf("goods[%d].image_url", i), "not valid UTF-8"})
		} else if len(g.ImageURL) > MaxURLBytes {
			v.Problems = append(v.Problems, FieldProblem{fmt.Sprintf("goods[%d].image_url", i), fmt.Sprintf("%d bytes, at most %d", len(g.ImageURL), MaxURLBytes)})
		}
	}
	if len(v.Problems) > 0 {
		return &v
	}
	return nil
}
