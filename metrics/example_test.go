package metrics_test

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/metrics"
	"github.com/waybillkit/waybill/wechat"
)

// Wire Metrics to the handler and the WeChat client, in your own registry.
func ExampleNew() {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(metrics.Config{Registerer: reg})
	if err != nil {
		panic(err)
	}
	// wechat.NewClient(wechat.Config{..., OnCall: m.ObserveCall})
	// waybill.NewHandler(waybill.Config{..., Observe: m.Observe})
	m.Observe(waybill.Observation{Kind: waybill.ObservedDeadLettered, AppID: "wx5f3a9c1d2e4b6a80", Detail: "permanent"})
	m.ObserveCall(wechat.CallInfo{Endpoint: "trace_waybill", AppID: "wx5f3a9c1d2e4b6a80", Errcode: 47001, Class: wechat.ClassPermanent})

	err = testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP waybill_dead_letters_total Dead letters published, by reason.
# TYPE waybill_dead_letters_total counter
waybill_dead_letters_total{appid="wx5f3a9c1d2e4b6a80",reason="permanent"} 1
`), "waybill_dead_letters_total")
	fmt.Println(err)
	// Output: <nil>
}
