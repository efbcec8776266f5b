package wechattest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

// A test starts the sandbox, fetches an access_token and traces a waybill
// with raw HTTP, as any client would against https://api.weixin.qq.com.
func Example() {
	srv := wechattest.NewServer(wechattest.Config{})
	defer srv.Close()
	srv.AddApp("wx0123456789abcdef", "s3cret")

	resp, err := http.Post(srv.URL+"/cgi-bin/stable_token", "application/json", strings.NewReader(
		`{"grant_type":"client_credential","appid":"wx0123456789abcdef","secret":"s3cret"}`))
	if err != nil {
		panic(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	fmt.Println("expires_in:", tok.ExpiresIn)

	body := `{"openid":"ovtZW4yB7DIj3CxOb6ii-nk4HhFo","waybill_id":"YT1234567890","receiver_phone":"13800138000",` +
		`"delivery_id":"YD","goods_info":{"detail_list":[{"goods_name":"茶叶 <特级> & 礼盒","goods_img_url":"https://img.example.com/tea.jpg"}]}}`
	resp, err = http.Post(srv.URL+"/cgi-bin/express/delivery/open_msg/trace_waybill?access_token="+tok.AccessToken,
		"application/json", strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	var tr struct {
		Errcode      int    `json:"errcode"`
		Errmsg       string `json:"errmsg"`
		WaybillToken string `json:"waybill_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	fmt.Println("trace_waybill:", tr.Errcode, tr.Errmsg, tr.WaybillToken != "")

	c := srv.CallsTo("trace_waybill")[0]
	fmt.Println("recorded:", c.AppID, c.Field("waybill_id"), c.Field("delivery_id"))
	w, _ := srv.Waybill("wx0123456789abcdef", "YT1234567890")
	fmt.Println("goods:", w.Goods[0].Name)

	// Without the JSON Content-Type, WeChat reads an empty body.
	resp, _ = http.Post(srv.URL+"/cgi-bin/express/delivery/open_msg/trace_waybill?access_token="+tok.AccessToken,
		"", strings.NewReader(body))
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	fmt.Println("no Content-Type:", tr.Errcode, tr.Errmsg)
	// Output:
	// expires_in: 7200
	// trace_waybill: 0 ok true
	// recorded: wx0123456789abcdef YT1234567890 YD
	// goods: 茶叶 <特级> & 礼盒
	// no Content-Type: 40003 invalid openid
}
