package waybill_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// An event-driven monolith runs the handler on Watermill's in-process
// GoChannel; the WeChat sandbox stands in for api.weixin.qq.com.
func ExampleHandler() {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wx5f3a9c1d2e4b6a80", "secret")
	tokens, _ := wechat.NewStableTokenSource(wechat.StableTokenConfig{
		BaseURL: sandbox.URL, Secrets: wechat.StaticSecrets{"wx5f3a9c1d2e4b6a80": "secret"},
	})
	client, _ := wechat.NewClient(wechat.Config{BaseURL: sandbox.URL, Tokens: tokens})

	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	handler, err := waybill.NewHandler(waybill.Config{Client: client, Publisher: pubsub})
	if err != nil {
		panic(err)
	}
	router, _ := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	handler.AddTo(router, pubsub)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	traced, _ := pubsub.Subscribe(ctx, event.WaybillTracedTopic)
	payload, _ := json.Marshal(event.OrderShipped{
		Version: 1, OrderID: "A1001", AppID: "wx5f3a9c1d2e4b6a80", OpenID: "oVtZW4yB7DIj3CxOb6ii-nk4HhFo",
		WaybillID: "SF1400000000001", DeliveryID: "SF", ReceiverPhone: "13800138000",
		Goods: []event.Goods{{Name: "云南普洱茶 <特级> & 礼盒", ImageURL: "https://img.example.cn/tea.jpg"}},
	})
	_ = pubsub.Publish(event.OrderShippedTopic, message.NewMessage(watermill.NewUUID(), payload))

	msg := <-traced
	msg.Ack()
	var out event.WaybillTraced
	_ = json.Unmarshal(msg.Payload, &out)
	fmt.Println(out.OrderID, out.WaybillID, out.WaybillToken != "")
	fmt.Println(strings.Contains(string(sandbox.CallsTo("trace_waybill")[0].Body), "<特级> & 礼盒"))
	// Output:
	// A1001 SF1400000000001 true
	// true
}

// Validation reports every problem at once and never echoes personal data.
func ExampleOrderShipped_Validate() {
	ev := event.OrderShipped{
		OrderID: "A1002", AppID: "wx5f3a9c1d2e4b6a80", WaybillID: "YT0000000002",
		Goods: []event.Goods{{Name: "丝巾", ImageURL: "https://img.example.cn/s.jpg", Description: strings.Repeat("真丝", 21)}},
	}
	fmt.Println(ev.Validate())
	// Output:
	// invalid order.shipped: openid: required; receiver_phone: required; goods[0].description: 42 characters, at most 40
}

// The waybill.traced UUID depends only on the input, so a redelivery
// publishes the same message ID.
func ExampleTracedMessageID() {
	a := event.TracedMessageID("wx5f3a9c1d2e4b6a80", "A1001", "SF1400000000001", "4200001234202611260000000001")
	b := event.TracedMessageID("wx5f3a9c1d2e4b6a80", "A1001", "SF1400000000001", "4200001234202611260000000001")
	fmt.Println(a == b, len(a))
	// Output: true 36
}
