package wechattest

import (
	"net/http"
	"slices"
	"unicode/utf8"
)

// line is one of the two product lines of open_msg, whose waybill tokens are
// not interchangeable.
type line int

const (
	lineQuery  line = iota // 查询组件: trace_waybill, query_trace, update_waybill_goods
	lineFollow             // 消息组件: follow_waybill, query_follow_trace, update_follow_waybill_goods
	lineNone               // endpoints without waybills
)

var openMsgHandlers = map[string]handler{
	"trace_waybill":               traceWaybill(lineQuery),
	"follow_waybill":              traceWaybill(lineFollow),
	"query_trace":                 queryTrace(lineQuery),
	"query_follow_trace":          queryTrace(lineFollow),
	"update_waybill_goods":        updateGoods(lineQuery),
	"update_follow_waybill_goods": updateGoods(lineFollow),
	"get_delivery_list":           (*Server).getDeliveryList,
	"open_openmsg":                (*Server).openComponent,
	"open_query_plugin":           (*Server).openComponent,
}

// Goods is one entry of goods_info.detail_list.
type Goods struct {
	Name   string `json:"goods_name"`
	ImgURL string `json:"goods_img_url"`
	Desc   string `json:"goods_desc,omitempty"`
}

type goodsInfo struct {
	DetailList []Goods `json:"detail_list"`
}

// maxGoodsDesc is WeChat's limit on goods_desc, in characters.
const maxGoodsDesc = 40

// checkGoods validates goods_info; it returns "" or a 47001 hint.
func checkGoods(g *goodsInfo) string {
	if g == nil || len(g.DetailList) == 0 {
		return "goods_info.detail_list is empty"
	}
	for _, d := range g.DetailList {
		switch {
		case d.Name == "":
			return "goods_name is empty"
		case d.ImgURL == "":
			return "goods_img_url is empty"
		case utf8.RuneCountInString(d.Desc) > maxGoodsDesc:
			return "goods_desc is longer than 40 characters"
		}
	}
	return ""
}

// storedGoods is what the sandbox keeps of goods: a copy, with goods_desc
// defaulting to the name as WeChat shows it.
func storedGoods(g *goodsInfo) []Goods {
	out := slices.Clone(g.DetailList)
	for i := range out {
		if out[i].Desc == "" {
			out[i].Desc = out[i].Name
		}
	}
	return out
}

// admit runs the checks every open_msg call passes, in WeChat's order: the
// access_token, the provider's permission, the body (read as empty without a
// JSON Content-Type), a required openid, then the quotas. It returns the
// caller's appid and whether the call may go on; if not, rep is the answer.
func (s *Server) admit(r *http.Request, c *Call, req interface{ openID() string }, ln line, needOpenID bool) (appid string, rep reply, ok bool) {
	now := s.now()
	cr, code := s.checkToken(r, "access_token", now, kindAccess, kindAuthorizer)
	if code == 0 && cr.kind == kindAuthorizer && !s.authorizerMayTrace(cr.appid) {
		code = 61007
	}
	if code != 0 {
		return "", fail(code), false
	}
	if rep, ok := decodeBody(r, c, req); !ok {
		return "", rep, false
	}
	if needOpenID && req.openID() == "" {
		return "", fail(40003), false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if code := s.consumeLocked(cr.appid, r.URL.Path, req.openID(), ln, now); code != 0 {
		return "", fail(code), false
	}
	return cr.appid, reply{}, true
}

type traceReq struct {
	OpenID          string     `json:"openid"`
	WaybillID       string     `json:"waybill_id"`
	ReceiverPhone   string     `json:"receiver_phone"`
	SenderPhone     string     `json:"sender_phone"`
	DeliveryID      string     `json:"delivery_id"`
	TransID         string     `json:"trans_id"`
	OrderDetailPath string     `json:"order_detail_path"`
	GoodsInfo       *goodsInfo `json:"goods_info"`
}

func (q *traceReq) openID() string { return q.OpenID }

type waybillTokenBody struct {
	errBody
	WaybillToken string `json:"waybill_token"`
}

// traceWaybill serves trace_waybill and follow_waybill: it creates the
// waybill on first sight and answers the same waybill_token ever after, for
// the same (appid, waybill_id), without touching the goods.
func traceWaybill(ln line) handler {
	return func(s *Server, r *http.Request, c *Call) reply {
		var req traceReq
		appid, rep, ok := s.admit(r, c, &req, ln, true)
		if !ok {
			return rep
		}
		switch {
		case req.WaybillID == "":
			return failHint(47001, "waybill_id is empty")
		case req.ReceiverPhone == "":
			return failHint(47001, "receiver_phone is empty")
		}
		if hint := checkGoods(req.GoodsInfo); hint != "" {
			return failHint(47001, hint)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.unknown[appWaybill{appid, req.WaybillID}] {
			return fail(931023)
		}
		key := waybillKey{ln, appid, req.WaybillID}
		w, ok := s.waybills[key]
		if !ok {
			w = &waybill{
				key:             key,
				token:           newSecretString([...]string{"o_", "f_"}[ln], 48),
				openID:          req.OpenID,
				deliveryID:      req.DeliveryID,
				receiverPhone:   req.ReceiverPhone,
				senderPhone:     req.SenderPhone,
				transID:         req.TransID,
				orderDetailPath: req.OrderDetailPath,
				goods:           storedGoods(req.GoodsInfo),
			}
			s.waybills[key] = w
			s.wbTokens[w.token] = w
		}
		return reply{body: waybillTokenBody{okBody, w.token}}
	}
}

type tokenReq struct {
	WaybillToken string     `json:"waybill_token"`
	OpenID       string     `json:"openid"`
	GoodsInfo    *goodsInfo `json:"goods_info"`
}

func (q *tokenReq) openID() string { return q.OpenID }

// waybillLocked finds the waybill of token for appid on line ln: a token of
// another appid or of the other line is as bad as an unknown one (9300507).
func (s *Server) waybillLocked(token, appid string, ln line) *waybill {
	w, ok := s.wbTokens[token]
	if !ok || w.key.appid != appid || w.key.line != ln {
		return nil
	}
	return w
}

type queryTraceBody struct {
	errBody
	WaybillInfo struct {
		WaybillID string `json:"waybill_id"`
		Status    int    `json:"status"`
	} `json:"waybill_info"`
	ShopInfo struct {
		GoodsInfo goodsInfo `json:"goods_info"`
	} `json:"shop_info"`
	DeliveryInfo Delivery `json:"delivery_info"`
}

// byToken builds the handler of an endpoint that acts on an existing waybill
// named by waybill_token: it checks the token belongs to the caller's appid
// and to line ln (9300507 otherwise) and, if withGoods, validates goods_info.
func byToken(ln line, withGoods bool, act func(s *Server, w *waybill, req *tokenReq) reply) handler {
	return func(s *Server, r *http.Request, c *Call) reply {
		var req tokenReq
		appid, rep, ok := s.admit(r, c, &req, ln, false)
		if !ok {
			return rep
		}
		if req.WaybillToken == "" {
			return failHint(47001, "waybill_token is empty")
		}
		if hint := checkGoods(req.GoodsInfo); withGoods && hint != "" {
			return failHint(47001, hint)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		w := s.waybillLocked(req.WaybillToken, appid, ln)
		if w == nil {
			return fail(9300507)
		}
		return act(s, w, &req)
	}
}

// queryTrace serves query_trace and query_follow_trace: the waybill's goods
// and carrier, and the next status of its script (see SetTrace).
func queryTrace(ln line) handler {
	return byToken(ln, false, func(s *Server, w *waybill, _ *tokenReq) reply {
		var b queryTraceBody
		b.errBody = okBody
		b.WaybillInfo.WaybillID = w.key.waybillID
		b.WaybillInfo.Status = s.nextStatusLocked(w)
		b.ShopInfo.GoodsInfo.DetailList = slices.Clone(w.goods)
		b.DeliveryInfo = s.delivery(w.deliveryID)
		return reply{body: b}
	})
}

// updateGoods serves update_waybill_goods and update_follow_waybill_goods:
// the goods shown from now on.
func updateGoods(ln line) handler {
	return byToken(ln, true, func(_ *Server, w *waybill, req *tokenReq) reply {
		w.goods = storedGoods(req.GoodsInfo)
		return reply{body: okBody}
	})
}

type noFields struct{}

func (noFields) openID() string { return "" }

type deliveryListBody struct {
	errBody
	DeliveryList []Delivery `json:"delivery_list"`
	Count        int        `json:"count"`
}

// getDeliveryList serves get_delivery_list from Config.Deliveries.
func (s *Server) getDeliveryList(r *http.Request, c *Call) reply {
	if _, rep, ok := s.admit(r, c, &noFields{}, lineNone, false); !ok {
		return rep
	}
	list := slices.Clone(s.cfg.Deliveries)
	return reply{body: deliveryListBody{okBody, list, len(list)}}
}

// openComponent serves open_openmsg and open_query_plugin, which only a
// third-party platform may call, with a merchant's authorizer_access_token.
func (s *Server) openComponent(r *http.Request, c *Call) reply {
	cr, code := s.checkToken(r, "access_token", s.now(), kindAccess, kindAuthorizer)
	if code == 0 && cr.kind != kindAuthorizer {
		code = 48001
	}
	if code != 0 {
		return fail(code)
	}
	if _, rep, ok := s.admit(r, c, &noFields{}, lineNone, false); !ok {
		return rep
	}
	return reply{body: okBody}
}
