package wechattest

// Delivery is a carrier as get_delivery_list and query_trace name it.
type Delivery struct {
	ID   string `json:"delivery_id"`
	Name string `json:"delivery_name"`
}

// DefaultDeliveries returns the carriers the sandbox lists by default: a
// handful of the about 1,400 WeChat knows, with WeChat's ids.
func DefaultDeliveries() []Delivery {
	return []Delivery{
		{"SF", "顺丰速运"},
		{"ZTO", "中通快递"},
		{"YTO", "圆通速递"},
		{"STO", "申通快递"},
		{"YD", "韵达速递"},
		{"JTSD", "极兔速递"},
		{"EMS", "中国邮政速递物流"},
		{"YZPY", "邮政快递包裹"},
		{"JD", "京东物流"},
		{"DBL", "德邦快递"},
		{"KYSY", "跨越速运"},
		{"ZJS", "宅急送"},
	}
}

// delivery names a carrier id; an id not in the list keeps an empty name.
func (s *Server) delivery(id string) Delivery {
	for _, d := range s.cfg.Deliveries {
		if d.ID == id {
			return d
		}
	}
	return Delivery{ID: id}
}
