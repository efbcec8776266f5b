package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

func ExampleClient_TraceWaybill() {
	// The sandbox stands in for https://api.weixin.qq.com.
	srv := wechattest.NewServer(wechattest.Config{})
	defer srv.Close()
	srv.AddApp("wx0123456789abcdef", "app-secret")

	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{
		BaseURL: srv.URL,
		Secrets: wechat.StaticSecrets{"wx0123456789abcdef": "app-secret"},
	})
	if err != nil {
		log.Fatal(err)
	}
	client, err := wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens})
	if err != nil {
		log.Fatal(err)
	}

	resp, err := client.TraceWaybill(context.Background(), "wx0123456789abcdef", &wechat.TraceWaybillRequest{
		OpenID:        "ovtZW4yB7DIj3CxOb6ii-nk4HhFo",
		ReceiverPhone: "13800000000",
		WaybillID:     "SF1400000001",
		DeliveryID:    "SF",
		GoodsInfo: wechat.GoodsInfo{DetailList: []wechat.Goods{
			{GoodsName: "西湖龙井 <特级> & 礼盒", GoodsImgURL: "https://img.example/tea.png"},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("got a waybill_token:", resp.WaybillToken != "")
	// What went over the wire: raw UTF-8, <>& unescaped.
	fmt.Printf("%s\n", srv.CallsTo("trace_waybill")[0].Body)
	// Output:
	// got a waybill_token: true
	// {"openid":"ovtZW4yB7DIj3CxOb6ii-nk4HhFo","receiver_phone":"13800000000","waybill_id":"SF1400000001","delivery_id":"SF","goods_info":{"detail_list":[{"goods_name":"西湖龙井 <特级> & 礼盒","goods_img_url":"https://img.example/tea.png"}]}}
}

func ExampleClassOf() {
	srv := wechattest.NewServer(wechattest.Config{AutoRegister: true})
	defer srv.Close()
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 45009})

	tokens, _ := wechat.NewStableTokenSource(wechat.StableTokenConfig{
		BaseURL: srv.URL, Secrets: wechat.StaticSecrets{"wxapp": "secret"}})
	client, _ := wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens})

	_, err := client.TraceWaybill(context.Background(), "wxapp", &wechat.TraceWaybillRequest{
		OpenID: "o1", ReceiverPhone: "13800000000", WaybillID: "YD1",
		GoodsInfo: wechat.GoodsInfo{DetailList: []wechat.Goods{{GoodsName: "书", GoodsImgURL: "https://img.example/b.png"}}},
	})
	switch wechat.ClassOf(err) {
	case wechat.ClassTransient, wechat.ClassMinuteRate:
		fmt.Println("retry later")
	case wechat.ClassDailyQuota:
		fmt.Println("park this appid until the daily reset")
	case wechat.ClassPermanent, wechat.ClassNotYet, wechat.ClassConfiguration, wechat.ClassToken:
		fmt.Println("dead-letter or alert")
	}
	var we *wechat.Error
	if errors.As(err, &we) {
		fmt.Println(we.Code, we.Class)
		fmt.Println(err)
	}
	// Output:
	// park this appid until the daily reset
	// 45009 daily_quota
	// wechat trace_waybill: errcode 45009: reach max api daily quota limit (daily_quota)
}

func ExampleDefaultClassify() {
	classify := func(code int) wechat.Class {
		if code == 9300501 { // a code this deployment treats as "not yet"
			return wechat.ClassNotYet
		}
		return wechat.DefaultClassify(code)
	}
	for _, code := range []int{-1, 42001, 45011, 45009, 931023, 40003, 48001, 9300501} {
		fmt.Println(code, wechat.DefaultClassify(code), classify(code))
	}
	// Output:
	// -1 transient transient
	// 42001 token token
	// 45011 minute_rate minute_rate
	// 45009 daily_quota daily_quota
	// 931023 not_yet not_yet
	// 40003 permanent permanent
	// 48001 configuration configuration
	// 9300501 permanent not_yet
}

// Two processes on cgi-bin/token share one store (in production a
// redisstore.Store), so they fetch one token between them.
func ExampleNewAccessTokenSource() {
	srv := wechattest.NewServer(wechattest.Config{})
	defer srv.Close()
	srv.AddApp("wxapp", "secret")

	store := new(wechat.MemoryStore)
	var tokens []string
	for range 2 { // one source per process
		src, err := wechat.NewAccessTokenSource(wechat.AccessTokenConfig{
			BaseURL: srv.URL, Secrets: wechat.StaticSecrets{"wxapp": "secret"}, Store: store})
		if err != nil {
			log.Fatal(err)
		}
		tok, err := src.Token(context.Background(), "wxapp")
		if err != nil {
			log.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	fmt.Println("same token:", tokens[0] == tokens[1])
	fmt.Println("fetches:", len(srv.CallsTo("token")))
	fmt.Println(wechat.Token{Value: tokens[0]}) // never printed
	// Output:
	// same token: true
	// fetches: 1
	// wechat.Token{[redacted]}
}

func ExampleWaybillStatus() {
	for s := wechat.WaybillNotPickedUp; s <= wechat.WaybillSignedByProxy+1; s++ {
		fmt.Println(int(s), s, s.Final())
	}
	// Output:
	// 0 not_picked_up false
	// 1 picked_up false
	// 2 in_transit false
	// 3 out_for_delivery false
	// 4 signed true
	// 5 exception false
	// 6 signed_by_proxy true
	// 7 WaybillStatus(7) false
}

// A third-party platform calls for the merchants that authorized it.
func ExampleComponentTokenSource() {
	srv := wechattest.NewServer(wechattest.Config{})
	defer srv.Close()
	srv.AddComponent("wxplatform", "platform-secret", "ticket@@@1")
	srv.AddAuthorizer("wxplatform", "wxmerchant", "refresh@@@1")

	tokens, err := wechat.NewComponentTokenSource(wechat.ComponentConfig{
		BaseURL:         srv.URL,
		ComponentAppID:  "wxplatform",
		ComponentSecret: "platform-secret",
		// Store: a redisstore.Store in production, so that the rotating
		// authorizer_refresh_token survives restarts.
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	// From the platform's push handler and its authorization callback:
	_ = tokens.SetVerifyTicket(ctx, "ticket@@@1")
	_ = tokens.SetRefreshToken(ctx, "wxmerchant", "refresh@@@1")

	client, _ := wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens})
	if err := client.OpenQueryPlugin(ctx, "wxmerchant"); err != nil {
		log.Fatal(err)
	}
	fmt.Println("query plugin opened for wxmerchant")
	fmt.Println(len(srv.CallsTo("api_component_token")), len(srv.CallsTo("api_authorizer_token")))
	// Output:
	// query plugin opened for wxmerchant
	// 1 1
}
