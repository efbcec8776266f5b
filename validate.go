package waybill

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxGoodsDescRunes is WeChat's limit on goods_desc: 40 characters, counted
// as characters (runes), not bytes — 40 Chinese characters are 120 bytes.
const MaxGoodsDescRunes = 40

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
	if len(e.Goods) == 0 {
		v.Problems = append(v.Problems, FieldProblem{"goods", "at least one item required"})
	}
	for i, g := range e.Goods {
		required(fmt.Sprintf("goods[%d].name", i), g.Name)
		required(fmt.Sprintf("goods[%d].image_url", i), g.ImageURL)
		if n := utf8.RuneCountInString(g.Description); n > MaxGoodsDescRunes {
			v.Problems = append(v.Problems, FieldProblem{
				fmt.Sprintf("goods[%d].description", i),
				fmt.Sprintf("%d characters, at most %d", n, MaxGoodsDescRunes),
			})
		}
	}
	if len(v.Problems) > 0 {
		return &v
	}
	return nil
}
