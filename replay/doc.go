// Package replay sends dead-lettered events back to be handled again once
// their cause is fixed: a permission granted, a phone number corrected, a
// producer repaired. Operators use it through the service's replay command,
// `waybill replay` (cmd/waybill); programs that replay dead letters
// themselves, on a schedule or from their own tools, import it and call Run.
//
// Run reads a dead-letter topic up to the end offsets it finds when it
// starts, selects events with a Filter (reason, WeChat errcode, appid, order
// id, time of the last failure), and republishes each to the topic it was
// consumed from, as it was before it died, with its deadletter.HeaderReplays
// header one higher. An event replayed Config.MaxReplays times already is
// skipped and reported instead, so a poison event cannot loop. A dry run
// reports what would move and changes nothing. A consumer group's committed
// position records what was replayed, so running the same replay again
// resumes it; Run documents what an interrupted or crashed replay sends
// twice.
//
// It reads the headers the deadletter package defines and talks to Kafka
// through sarama with a kafka.Config; it does not import the Handler.
package replay
