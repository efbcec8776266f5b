// Package redisutil is what waybill's Redis stores share, so that the trace
// store (tracestore/redis) and the token store (wechat/redisstore) cannot
// drift apart: the one lock both take (Acquire, AcquireAs) and the one way
// both read a JSON value (GetJSON). Only those stores import it.
package redisutil
