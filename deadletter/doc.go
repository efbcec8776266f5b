// Package deadletter is waybill's record-header protocol: every waybill_*
// header, written and read side by side. It holds the dead letter an event
// ends as (Letter, its Reason, Parse, and the original message back again)
// and the history an event carries while it is parked on a delay topic
// (History, Park, Unpark), which a dead letter keeps and a replay clears.
//
// The Handler writes these headers; the kafka package's DelayRunner and
// partition key, the replay package and operators' own tools read them.
// It depends on Watermill's message type only.
package deadletter
