package wechat

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

const (
	appID     = "wx0123456789abcdef"
	appSecret = "app-secret-0123"
	openID    = "ovtZW4yB7DIj3CxOb6ii-nk4HhFo"
)

// sandbox starts a wechattest server with appID registered and a Client on a
// StableTokenSource pointed at it, both on clock.
func sandbox(t *testing.T, cfg wechattest.Config, clock *testclock.Clock) (*wechattest.Server, *Client) {
	t.Helper()
	if clock == nil {
		clock = newFakeClock()
	}
	cfg.Now = clock.Now
	srv := wechattest.NewServer(cfg)
	t.Cleanup(srv.Close)
	srv.AddApp(appID, appSecret)
	src, err := NewStableTokenSource(StableTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{appID: appSecret}, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return srv, newTestClient(t, srv.URL, src)
}

func mixedGoods() GoodsInfo {
	return GoodsInfo{DetailList: []Goods{
		{GoodsName: "西湖龙井 <特级> & 礼盒", GoodsImgURL: "https://img.example/tea.png?a=1&b=2", GoodsDesc: "明前茶，250克"},
		{GoodsName: "紫砂壶", GoodsImgURL: "https://img.example/pot.png"},
	}}
}

func wantGoods(t *testing.T, got []Goods, want GoodsInfo) {
	t.Helper()
	w := slices.Clone(want.DetailList)
	for i := range w {
		if w[i].GoodsDesc == "" {
			w[i].GoodsDesc = w[i].GoodsName // WeChat shows the name when no description was given
		}
	}
	if !slices.Equal(got, w) {
		t.Fatalf("goods\n got %+v\nwant %+v", got, w)
	}
}

func sandboxGoods(gs []wechattest.Goods) []Goods {
	out := make([]Goods, len(gs))
	for i, g := range gs {
		out[i] = Goods{GoodsName: g.Name, GoodsImgURL: g.ImgURL, GoodsDesc: g.Desc}
	}
	return out
}

func TestQueryPluginLine(t *testing.T) {
	srv, c := sandbox(t, wechattest.Config{}, nil)
	ctx := context.Background()
	srv.SetTrace(appID, "SF1400000001", 1, 2, 3, 4)
	req := &TraceWaybillRequest{OpenID: openID, ReceiverPhone: "13800000000", WaybillID: "SF1400000001",
		DeliveryID: "SF", TransID: "4200001234202611260000000001", GoodsInfo: mixedGoods()}

	tr, err := c.TraceWaybill(ctx, appID, req)
	if err != nil {
		t.Fatal(err)
	}
	calls := srv.CallsTo("trace_waybill")
	if len(calls) != 1 || calls[0].HTTPStatus != 200 || calls[0].Errcode != 0 {
		t.Fatalf("calls %+v", calls)
	}
	body := calls[0].Body
	if !bytes.Contains(body, []byte(`"goods_name":"西湖龙井 <特级> & 礼盒"`)) || bytes.Contains(body, []byte(`\u`)) {
		t.Fatalf("body not raw UTF-8: %s", body)
	}
	if ct := calls[0].Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	wb, ok := srv.Waybill(appID, "SF1400000001")
	if !ok || wb.Token != tr.WaybillToken || wb.DeliveryID != "SF" {
		t.Fatalf("sandbox waybill %+v, answered token %q", wb, tr.WaybillToken)
	}
	wantGoods(t, sandboxGoods(wb.Goods), mixedGoods())

	// Repeating trace_waybill returns the same token and leaves the goods alone.
	again := *req
	again.GoodsInfo = GoodsInfo{DetailList: []Goods{{GoodsName: "别的", GoodsImgURL: "https://img.example/x.png"}}}
	tr2, err := c.TraceWaybill(ctx, appID, &again)
	if err != nil || tr2.WaybillToken != tr.WaybillToken {
		t.Fatalf("repeat: %+v, %v", tr2, err)
	}

	// query_trace walks the scripted statuses and round-trips the goods.
	var statuses []WaybillStatus
	for range 4 {
		q, err := c.QueryTrace(ctx, appID, &QueryTraceRequest{WaybillToken: tr.WaybillToken, OpenID: openID})
		if err != nil {
			t.Fatal(err)
		}
		if q.WaybillInfo.WaybillID != "SF1400000001" || q.DeliveryInfo.DeliveryID != "SF" || q.DeliveryInfo.DeliveryName == "" {
			t.Fatalf("query_trace %+v", q)
		}
		wantGoods(t, q.ShopInfo.GoodsInfo.DetailList, mixedGoods())
		statuses = append(statuses, q.WaybillInfo.Status)
	}
	if want := []WaybillStatus{WaybillPickedUp, WaybillInTransit, WaybillOutForDelivery, WaybillSigned}; !slices.Equal(statuses, want) {
		t.Fatalf("statuses %v, want %v", statuses, want)
	}
	if !statuses[3].Final() || statuses[2].Final() {
		t.Fatal("Final() wrong")
	}

	// update_waybill_goods changes what query_trace shows.
	newGoods := GoodsInfo{DetailList: []Goods{{GoodsName: "换货：白茶 & <新>", GoodsImgURL: "https://img.example/w.png", GoodsDesc: "补发"}}}
	if err := c.UpdateWaybillGoods(ctx, appID, &UpdateWaybillGoodsRequest{WaybillToken: tr.WaybillToken, OpenID: openID, GoodsInfo: newGoods}); err != nil {
		t.Fatal(err)
	}
	q, err := c.QueryTrace(ctx, appID, &QueryTraceRequest{WaybillToken: tr.WaybillToken})
	if err != nil {
		t.Fatal(err)
	}
	wantGoods(t, q.ShopInfo.GoodsInfo.DetailList, newGoods)

	// A bad waybill_token is permanent.
	_, err = c.QueryTrace(ctx, appID, &QueryTraceRequest{WaybillToken: "no-such-token"})
	if ClassOf(err) != ClassPermanent {
		t.Fatalf("bad waybill_token: %v (%v)", err, ClassOf(err))
	}
}

func TestMessageComponentLine(t *testing.T) {
	srv, c := sandbox(t, wechattest.Config{}, nil)
	ctx := context.Background()
	srv.SetTrace(appID, "YD2", 0, 5, 6)
	fw, err := c.FollowWaybill(ctx, appID, &FollowWaybillRequest{OpenID: openID, ReceiverPhone: "13900000000",
		WaybillID: "YD2", DeliveryID: "YD", GoodsInfo: mixedGoods()})
	if err != nil {
		t.Fatal(err)
	}
	if wb, ok := srv.FollowWaybill(appID, "YD2"); !ok || !wb.Follow || wb.Token != fw.WaybillToken {
		t.Fatalf("sandbox waybill %+v", wb)
	}
	var statuses []WaybillStatus
	for range 3 {
		q, err := c.QueryFollowTrace(ctx, appID, &QueryFollowTraceRequest{WaybillToken: fw.WaybillToken})
		if err != nil {
			t.Fatal(err)
		}
		wantGoods(t, q.ShopInfo.GoodsInfo.DetailList, mixedGoods())
		statuses = append(statuses, q.WaybillInfo.Status)
	}
	if want := []WaybillStatus{WaybillNotPickedUp, WaybillException, WaybillSignedByProxy}; !slices.Equal(statuses, want) {
		t.Fatalf("statuses %v, want %v", statuses, want)
	}
	g := GoodsInfo{DetailList: []Goods{{GoodsName: "礼品卡 <电子>", GoodsImgURL: "https://img.example/c.png"}}}
	if err := c.UpdateFollowWaybillGoods(ctx, appID, &UpdateFollowWaybillGoodsRequest{WaybillToken: fw.WaybillToken, GoodsInfo: g}); err != nil {
		t.Fatal(err)
	}
	q, err := c.QueryFollowTrace(ctx, appID, &QueryFollowTraceRequest{WaybillToken: fw.WaybillToken})
	if err != nil {
		t.Fatal(err)
	}
	wantGoods(t, q.ShopInfo.GoodsInfo.DetailList, g)
	// The two lines' tokens are not interchangeable.
	if _, err := c.QueryTrace(ctx, appID, &QueryTraceRequest{WaybillToken: fw.WaybillToken}); ClassOf(err) != ClassPermanent {
		t.Fatalf("follow token on query_trace: %v", err)
	}
}

func TestGetDeliveryListAndQuota(t *testing.T) {
	srv, c := sandbox(t, wechattest.Config{AppDailyQuota: 10}, nil)
	ctx := context.Background()
	dl, err := c.GetDeliveryList(ctx, appID)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Count != len(dl.DeliveryList) || !slices.ContainsFunc(dl.DeliveryList, func(d Delivery) bool {
		return d.DeliveryID == "SF" && d.DeliveryName != ""
	}) {
		t.Fatalf("delivery list %+v", dl)
	}
	for range 3 {
		if _, err := c.TraceWaybill(ctx, appID, sampleTrace()); err != nil {
			t.Fatal(err)
		}
	}
	q, err := c.GetQuota(ctx, appID, &QuotaRequest{CGIPath: OpenMsgPath("trace_waybill")})
	if err != nil {
		t.Fatal(err)
	}
	if q.Quota.DailyLimit != 10 || q.Quota.Used != 3 || q.Quota.Remain != 7 {
		t.Fatalf("quota %+v", q.Quota)
	}
	if calls := srv.CallsTo("/cgi-bin/openapi/quota/get"); len(calls) != 1 || calls[0].Field("cgi_path") != "/cgi-bin/express/delivery/open_msg/trace_waybill" {
		t.Fatalf("quota calls %+v", calls)
	}
}

func TestSandboxErrorsAreClassified(t *testing.T) {
	srv, c := sandbox(t, wechattest.Config{OpenIDDailyQuota: 2, MinuteLimit: 50}, nil)
	ctx := context.Background()
	srv.MarkUnknown(appID, "UNKNOWN1")
	req := sampleTrace()
	req.WaybillID = "UNKNOWN1"
	if _, err := c.TraceWaybill(ctx, appID, req); ClassOf(err) != ClassNotYet {
		t.Fatalf("unknown waybill: %v", err)
	}
	bad := sampleTrace()
	bad.OpenID = ""
	if _, err := c.TraceWaybill(ctx, appID, bad); ClassOf(err) != ClassPermanent {
		t.Fatalf("missing openid: %v", err)
	}
	for i := range 3 { // the third call by the same openid exceeds its daily 2
		r := sampleTrace()
		r.OpenID = "o-quota"
		_, err := c.TraceWaybill(ctx, appID, r)
		if i < 2 && err != nil {
			t.Fatal(err)
		}
		if i == 2 && ClassOf(err) != ClassDailyQuota {
			t.Fatalf("openid quota: %v", err)
		}
	}
}

func TestSandboxFaultsAreTransient(t *testing.T) {
	srv, c := sandbox(t, wechattest.Config{}, nil)
	ctx := context.Background()
	cases := []wechattest.Fault{
		{Endpoint: "trace_waybill", Errcode: -1},
		{Endpoint: "trace_waybill", HTTPStatus: 503},
		{Endpoint: "trace_waybill", Drop: true},
		{Endpoint: "trace_waybill", Errcode: 45011},
	}
	want := []Class{ClassTransient, ClassTransient, ClassTransient, ClassMinuteRate}
	for i, f := range cases {
		remove := srv.Inject(f)
		_, err := c.TraceWaybill(ctx, appID, sampleTrace())
		remove()
		if ClassOf(err) != want[i] {
			t.Errorf("fault %+v: %v (%v), want %v", f, err, ClassOf(err), want[i])
		}
	}
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: time.Minute})
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := c.TraceWaybill(dctx, appID, sampleTrace())
	if !errors.Is(err, context.DeadlineExceeded) || ClassOf(err) != ClassTransient {
		t.Fatalf("latency past deadline: %v", err)
	}
}

func TestProviderOnlyEndpoints(t *testing.T) {
	clock := newFakeClock()
	srv := componentSandbox(t, clock)
	const merchant = merchantID
	src := newComponent(t, srv.URL, clock, new(MemoryStore))
	ctx := context.Background()
	if err := src.SetVerifyTicket(ctx, "ticket-0001"); err != nil {
		t.Fatal(err)
	}
	if err := src.SetRefreshToken(ctx, merchant, "refresh-0001"); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, srv.URL, src)
	if err := c.OpenMsg(ctx, merchant); err != nil {
		t.Fatal(err)
	}
	if err := c.OpenQueryPlugin(ctx, merchant); err != nil {
		t.Fatal(err)
	}
	for _, ep := range []string{"open_openmsg", "open_query_plugin"} {
		if calls := srv.CallsTo(ep); len(calls) != 1 || calls[0].AppID != merchant || string(calls[0].Body) != "{}" {
			t.Fatalf("%s calls %+v", ep, calls)
		}
	}
	srv.SetLogisticsPermission(merchant, false)
	if err := c.OpenQueryPlugin(ctx, merchant); ClassOf(err) != ClassConfiguration {
		t.Fatalf("without permission set 45: %v", err)
	}
}
