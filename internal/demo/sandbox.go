package demo

import (
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// Sandbox is the WeChat sandbox with the demo's two merchants registered,
// and a client that reaches it.
type Sandbox struct {
	*wechattest.Server
	Client *wechat.Client
}

// NewSandbox starts the sandbox. WeChat rejects RejectedOpenID there with
// 40003, as it would a buyer it does not know. Close it when done.
func NewSandbox() (*Sandbox, error) {
	srv := wechattest.NewServer(wechattest.Config{})
	secrets := wechat.StaticSecrets{TeaShop: "tea-shop-secret", SportShop: "sport-shop-secret"}
	for appid, secret := range secrets {
		srv.AddApp(appid, secret)
	}
	srv.Inject(wechattest.Fault{
		Endpoint: "trace_waybill",
		Match:    func(c *wechattest.Call) bool { return c.Field("openid") == RejectedOpenID },
		Errcode:  40003,
	})
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: srv.URL, Secrets: secrets})
	if err == nil {
		var client *wechat.Client
		if client, err = wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens}); err == nil {
			return &Sandbox{Server: srv, Client: client}, nil
		}
	}
	srv.Close()
	return nil, err
}
