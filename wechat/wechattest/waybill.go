package wechattest

import "slices"

type waybillKey struct {
	line      line
	appid     string
	waybillID string
}

type appWaybill struct{ appid, waybillID string }

// waybill is the sandbox's state of one waybill on one line.
type waybill struct {
	key             waybillKey
	token           string
	openID          string
	deliveryID      string
	receiverPhone   string
	senderPhone     string
	transID         string
	orderDetailPath string
	goods           []Goods
	queries         int
}

// Waybill is a snapshot of a waybill the sandbox knows, for assertions.
type Waybill struct {
	AppID           string
	WaybillID       string
	Follow          bool   // created by follow_waybill (message component) rather than trace_waybill
	Token           string // the waybill_token answered
	OpenID          string // from the creating call
	DeliveryID      string
	ReceiverPhone   string
	SenderPhone     string
	TransID         string
	OrderDetailPath string
	Goods           []Goods // as shown now: goods_desc defaults to goods_name
	Queries         int     // query_trace (or query_follow_trace) calls answered so far
}

// Waybill returns the waybill trace_waybill created for (appid, waybillID).
func (s *Server) Waybill(appid, waybillID string) (Waybill, bool) {
	return s.snapshot(waybillKey{lineQuery, appid, waybillID})
}

// FollowWaybill returns the waybill follow_waybill created for (appid, waybillID).
func (s *Server) FollowWaybill(appid, waybillID string) (Waybill, bool) {
	return s.snapshot(waybillKey{lineFollow, appid, waybillID})
}

func (s *Server) snapshot(k waybillKey) (Waybill, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.waybills[k]
	if !ok {
		return Waybill{}, false
	}
	return Waybill{
		AppID: k.appid, WaybillID: k.waybillID, Follow: k.line == lineFollow,
		Token: w.token, OpenID: w.openID, DeliveryID: w.deliveryID,
		ReceiverPhone: w.receiverPhone, SenderPhone: w.senderPhone, TransID: w.transID,
		OrderDetailPath: w.orderDetailPath, Goods: slices.Clone(w.goods), Queries: w.queries,
	}, true
}

// SetTrace scripts the statuses query_trace answers for (appid, waybillID):
// the first query answers statuses[0], each further query the next one, and
// the last one repeats. It may be called before or after the waybill is
// created; the script applies to both lines, each counting its own queries
// from the start of the waybill. Without a script the status is 0.
//
// The status values are WeChat's: 0 not picked up, 1 picked up, 2 in transit,
// 3 out for delivery, 4 signed, 5 exception, 6 signed by proxy.
func (s *Server) SetTrace(appid, waybillID string, statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[appWaybill{appid, waybillID}] = slices.Clone(statuses)
}

// nextStatusLocked answers the status for the next query of w.
func (s *Server) nextStatusLocked(w *waybill) int {
	script := s.scripts[appWaybill{w.key.appid, w.key.waybillID}]
	i := w.queries
	w.queries++
	if len(script) == 0 {
		return 0
	}
	return script[min(i, len(script)-1)]
}

// MarkUnknown makes trace_waybill and follow_waybill answer 931023 (waybill
// not found or no logistics info yet) for (appid, waybillID) until MarkKnown.
func (s *Server) MarkUnknown(appid, waybillID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unknown[appWaybill{appid, waybillID}] = true
}

// MarkKnown undoes MarkUnknown: the carrier now knows the waybill.
func (s *Server) MarkKnown(appid, waybillID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.unknown, appWaybill{appid, waybillID})
}
