// Package demo is the whole waybill job in one function: the quickstart runs
// it on an in-process Kafka, the integration test on a real broker. Only
// they import it.
package demo

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
)

// The two merchants of the demo, as a service provider would host them.
const (
	TeaShop   = "wx5f3a9c1d2e4b6a80"
	SportShop = "wx7c2e4a6b8d0f1e32"
)

// RejectedOpenID is a buyer WeChat does not know under TeaShop: the sandbox
// answers 40003 for it, and the event is dead-lettered as permanent.
const RejectedOpenID = "oVtZW4yB7DIj3CxOb6ii-unknown0"

// Case is one demo event and what must become of it.
type Case struct {
	OrderID string
	Payload []byte
	// Want is "traced" or a dead-letter reason.
	Want string
}

// Cases returns n realistic order.shipped events (n ≥ 3): all traceable but
// two — one invalid (goods description over 40 characters) and one whose
// buyer WeChat rejects. Order ids carry prefix so that runs do not collide.
func Cases(prefix string, n int) []Case {
	goods := []event.Goods{
		{Name: "云南普洱茶 357克 七子饼", ImageURL: "https://img.example.cn/puer.jpg", Description: "2016年春茶 古树料"},
		{Name: "李宁 跑鞋 <限量版> & 礼盒", ImageURL: "https://img.example.cn/shoe.jpg?a=1&b=2", Description: "尺码42 <男款> & 赠品"},
		{Name: "三只松鼠 坚果大礼包", ImageURL: "https://img.example.cn/nuts.jpg"},
		{Name: "景德镇 青花瓷 茶具套装", ImageURL: "https://img.example.cn/cups.jpg", Description: "一壶四杯"},
		{Name: "安踏 运动T恤", ImageURL: "https://img.example.cn/tee.jpg", Description: "速干面料"},
	}
	carriers := []struct{ id, prefix string }{{"SF", "SF"}, {"YTO", "YT"}, {"ZTO", "7"}, {"YD", "43"}, {"JTSD", "JT"}, {"EMS", "E"}}
	shipped := time.Date(2026, 11, 26, 9, 30, 0, 0, time.FixedZone("CST", 8*3600))

	cases := make([]Case, 0, n)
	for i := range n {
		appid := TeaShop
		if i%2 == 1 {
			appid = SportShop
		}
		c := carriers[i%len(carriers)]
		ev := event.OrderShipped{
			Version:         event.SchemaVersion,
			OrderID:         fmt.Sprintf("%s-%04d", prefix, i+1),
			AppID:           appid,
			OpenID:          fmt.Sprintf("oVtZW4yB7DIj3CxOb6ii-buyer%03d", i%7),
			TransID:         fmt.Sprintf("42000012342026112600%08d", i+1),
			WaybillID:       fmt.Sprintf("%s%s%010d", c.prefix, strings.ToUpper(prefix), 3100000000+i),
			DeliveryID:      c.id,
			ReceiverPhone:   fmt.Sprintf("1380013%04d", i),
			SenderPhone:     "02087654321",
			Goods:           []event.Goods{goods[i%len(goods)]},
			OrderDetailPath: "pages/order/detail?id=" + fmt.Sprint(i+1),
			ShippedAt:       shipped.Add(time.Duration(i) * time.Minute),
		}
		want := "traced"
		switch i {
		case n - 2:
			ev.Goods = []event.Goods{{Name: "手工 丝绸 围巾", ImageURL: "https://img.example.cn/silk.jpg",
				Description: strings.Repeat("杭州真丝", 11)}} // 44 characters: over WeChat's 40
			want = string(deadletter.ReasonInvalidEvent)
		case n - 1:
			ev.AppID, ev.OpenID = TeaShop, RejectedOpenID
			want = string(deadletter.ReasonPermanent)
		}
		b, err := json.Marshal(ev)
		if err != nil {
			panic(err) // a fixed value of a plain struct always encodes
		}
		cases = append(cases, Case{OrderID: ev.OrderID, Payload: b, Want: want})
	}
	return cases
}
