package wechat

import (
	"errors"
	"fmt"
)

// Class tells a caller what to do about a failed call.
type Class int

// The classes. The zero Class means "no error".
const (
	ClassTransient     Class = iota + 1 // network, HTTP 5xx, -1, timeouts: retry with backoff
	ClassToken                          // 40001/40014/42001: refresh once, retry once
	ClassMinuteRate                     // 45011: wait for the next minute
	ClassDailyQuota                     // 45009: stop this appid until the daily reset
	ClassNotYet                         // 931023 (and 9300559): retry hours later, bounded
	ClassPermanent                      // bad input for this event: 40003, 47001, 9300507, unknown codes...
	ClassConfiguration                  // operator must act: 48001, 48004, 61007, 40164, 61004, 61023, 61006
)

var classNames = [...]string{
	ClassTransient:     "transient",
	ClassToken:         "token",
	ClassMinuteRate:    "minute_rate",
	ClassDailyQuota:    "daily_quota",
	ClassNotYet:        "not_yet",
	ClassPermanent:     "permanent",
	ClassConfiguration: "configuration",
}

// String returns the class's snake_case name, as used in logs and dead-letter
// headers; "none" for the zero Class.
func (c Class) String() string {
	if c > 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	if c == 0 {
		return "none"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// classTable is the one place where WeChat's errcodes meet their meaning for a
// caller. Codes not listed are permanent: an unknown answer about this request
// must not be retried forever. Local failures never reach this table.
var classTable = map[int]Class{
	-1: ClassTransient, // system busy

	40001: ClassToken, // access_token invalid or not latest
	40014: ClassToken, // malformed access_token
	42001: ClassToken, // access_token expired

	45011: ClassMinuteRate, // per-minute limit
	45009: ClassDailyQuota, // daily quota exhausted

	931023:  ClassNotYet, // waybill not found / no logistics info yet
	9300559: ClassNotYet, // older code for the same

	40003:   ClassPermanent, // invalid openid (or missing Content-Type)
	47001:   ClassPermanent, // data format error
	9300507: ClassPermanent, // bad waybill_token

	48001: ClassConfiguration, // api unauthorized: component not enabled
	48004: ClassConfiguration, // api forbidden for irregularities
	61007: ClassConfiguration, // provider lacks permission set 45
	40164: ClassConfiguration, // caller IP not in the allow list
	61004: ClassConfiguration, // caller IP not in the allow list (component)
	61023: ClassConfiguration, // authorizer_refresh_token invalid: re-authorize
	61006: ClassConfiguration, // component_verify_ticket invalid: the ticket push is not reaching the platform
	40013: ClassConfiguration, // invalid appid
	40125: ClassConfiguration, // invalid appsecret
	40243: ClassConfiguration, // appsecret frozen
}

// DefaultClassify maps a WeChat errcode to its Class using the table in
// ../shared/wechat-api.md: -1 is transient; 40001, 40014 and 42001 are token
// errors; 45011 minute-rate; 45009 daily-quota; 931023 and 9300559 not-yet;
// 48001, 48004, 61007, 40164, 61004, 61023, 61006 (and the token endpoints' 40013,
// 40125, 40243) need an operator; everything else, known or not, is permanent.
//
// To extend it, wrap it:
//
//	Classify: func(code int) wechat.Class {
//		if code == 9300501 {
//			return wechat.ClassNotYet
//		}
//		return wechat.DefaultClassify(code)
//	}
func DefaultClassify(code int) Class {
	if c, ok := classTable[code]; ok {
		return c
	}
	return ClassPermanent
}

// Error is WeChat's answer to a call that did not succeed: a non-zero errcode,
// or an HTTP status other than 200.
type Error struct {
	Endpoint   string // e.g. "trace_waybill"
	Code       int    // errcode; 0 when an HTTP error carried none
	Msg        string // errmsg as WeChat sent it (tokens scrubbed)
	HTTPStatus int    // 0 when WeChat answered 200
	Class      Class
}

// Error formats e as "wechat trace_waybill: errcode 40003: invalid openid (permanent)".
func (e *Error) Error() string {
	s := "wechat " + e.Endpoint + ": "
	if e.HTTPStatus != 0 {
		s += fmt.Sprintf("HTTP %d: ", e.HTTPStatus)
	}
	if e.Code != 0 || e.HTTPStatus == 0 {
		s += fmt.Sprintf("errcode %d: ", e.Code)
	}
	msg := e.Msg
	if msg == "" {
		msg = "no errmsg"
	}
	return s + msg + " (" + e.Class.String() + ")"
}

// ErrNotRefreshable is returned by token sources that cannot obtain a new
// token (such as [StaticTokenSource]) when WeChat rejected theirs. [ClassOf]
// classifies it as ClassConfiguration: someone must supply a new token.
var ErrNotRefreshable = errors.New("wechat: token source cannot refresh")

// ErrNoVerifyTicket is returned by [ComponentTokenSource] when no unexpired
// component_verify_ticket has been stored. [ClassOf] classifies it as
// ClassConfiguration: the platform's ticket push must be wired to
// SetVerifyTicket.
var ErrNoVerifyTicket = errors.New("wechat: no component_verify_ticket stored")

// ErrNoRefreshToken is returned by [ComponentTokenSource] when no
// authorizer_refresh_token is stored for an appid. [ClassOf] classifies it as
// ClassConfiguration: the merchant must authorize, and the authorization's
// refresh token be passed to SetRefreshToken.
var ErrNoRefreshToken = errors.New("wechat: no authorizer_refresh_token stored")

// ErrNotSent marks an error of a call that WeChat cannot have received: no
// connection was obtained for it (dial, DNS and TLS handshake failures, the
// context ending before a connection was ready), its context was done before
// it started, its token source failed, or it failed before the request was
// built. Test it with errors.Is; it adds to the error, it does not replace
// it, so [ClassOf] and errors.As see the same error as without it.
//
// An error without it may still be of a call WeChat never received: the
// marker is set only when that is certain. A call is "sent" once net/http
// reports a connection for it (httptrace GotConn): HTTP/2 may write a
// request after RoundTrip returned, so nothing later is proof of not
// sending. A custom RoundTripper that reports no GetConn gets no marker for
// its errors. A call whose first attempt WeChat answered (say with 40001)
// is never ErrNotSent, whatever happened to the retry.
var ErrNotSent = errors.New("wechat: request not sent")

// notSentError adds ErrNotSent to err; its message is err's.
type notSentError struct{ err error }

func notSent(err error) error { return &notSentError{err} }

func (e *notSentError) Error() string        { return e.err.Error() }
func (e *notSentError) Unwrap() error        { return e.err }
func (e *notSentError) Is(target error) bool { return target == ErrNotSent }

// sent removes ErrNotSent from err, which follows a request WeChat received.
func sent(err error) error {
	if ns, ok := err.(*notSentError); ok {
		return sent(ns.err) // keeps the inner error's type for callers that assert it
	}
	if errors.Is(err, ErrNotSent) {
		return &sentError{err}
	}
	return err
}

// sentError hides any ErrNotSent in err's chain, for an error that follows a
// request WeChat did receive (a token refresh failing after a rejection).
// It has no Unwrap, since errors.Is would then find the marker below it;
// Is and As forward everything else, so ClassOf still sees err.
type sentError struct{ err error }

func (e *sentError) Error() string { return e.err.Error() }
func (e *sentError) Is(target error) bool {
	return target != ErrNotSent && errors.Is(e.err, target)
}
func (e *sentError) As(target any) bool { return errors.As(e.err, target) }

// ErrNoWaybillToken is in the error of TraceWaybill or FollowWaybill when
// WeChat (or a gateway in front of it) answered HTTP 200 with errcode 0 but no
// waybill_token, e.g. "{}": the call cannot count as done without the token.
// [ClassOf] classifies it as ClassTransient, as it does an undecodable answer:
// retry, bounded by the caller's policy.
var ErrNoWaybillToken = errors.New("wechat: answer has no waybill_token")

// noWaybillTokenError is ErrNoWaybillToken naming its endpoint.
type noWaybillTokenError struct{ endpoint string }

func (e *noWaybillTokenError) Error() string {
	return "wechat " + e.endpoint + ": answer has errcode 0 but no waybill_token"
}
func (e *noWaybillTokenError) Is(target error) bool { return target == ErrNoWaybillToken }

// ClassOf classifies any error returned by this package. nil gives 0. An
// [*Error] found with errors.As gives its Class. [ErrNotRefreshable],
// [ErrNoVerifyTicket], [ErrNoRefreshToken] and [ErrUnknownAppID] give
// ClassConfiguration. Every other error (network, timeouts,
// io.ErrUnexpectedEOF, an undecodable answer, [ErrNoWaybillToken],
// context.DeadlineExceeded during the HTTP call, and anything unknown) is
// ClassTransient: a local failure says nothing about the request and must
// never cause it to be dropped as permanent. [ErrNotSent] does not change
// the class.
func ClassOf(err error) Class {
	if err == nil {
		return 0
	}
	var we *Error
	if errors.As(err, &we) {
		return we.Class
	}
	if errors.Is(err, ErrNotRefreshable) || errors.Is(err, ErrNoVerifyTicket) ||
		errors.Is(err, ErrNoRefreshToken) || errors.Is(err, ErrUnknownAppID) {
		return ClassConfiguration
	}
	return ClassTransient
}
