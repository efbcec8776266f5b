package deadletter

// Reason classifies why an event was dead-lettered. Operators filter replays
// by it.
type Reason string

const (
	// ReasonInvalidEvent: the event could not be decoded or failed Validate.
	// WeChat was not called. Fix the producer, then replay.
	ReasonInvalidEvent Reason = "invalid_event"
	// ReasonPermanent: WeChat rejected the event itself (e.g. 40003 invalid
	// openid, 47001 data format error). Retrying the same event cannot help.
	ReasonPermanent Reason = "permanent"
	// ReasonConfiguration: WeChat refused the merchant's setup (48001 plugin
	// not enabled, 61007 provider not authorized, 40164 IP not allowed…).
	// An operator must act; then replay.
	ReasonConfiguration Reason = "configuration"
	// ReasonNotYetExhausted: WeChat kept answering 931023 (waybill unknown)
	// past the configured number of attempts.
	ReasonNotYetExhausted Reason = "not_yet_exhausted"
	// ReasonTooManyAttempts: a retriable event was parked more often than
	// the configured limit.
	ReasonTooManyAttempts Reason = "too_many_attempts"
)

// Known reports whether r is one of the reasons waybill writes.
func (r Reason) Known() bool {
	switch r {
	case ReasonInvalidEvent, ReasonPermanent, ReasonConfiguration, ReasonNotYetExhausted, ReasonTooManyAttempts:
		return true
	}
	return false
}
