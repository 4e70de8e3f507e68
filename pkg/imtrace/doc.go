// Package imtrace traces instant messages hop by hop with OpenTelemetry: one
// trace per message, from the sender's send to the recipient's ACK, with the
// W3C trace context carried in the IM frame's traceparent field and in the
// bus messages' NATS headers. It is the library other IM teams import;
// docs/tracing.md is its guide, with an example for every hop.
//
// A process makes one Tracer (New) and, per hop, starts a span under the
// context the message brought, passes the span's context on, and ends it:
//
//	sp := tr.Start(imtrace.Parse(f.Trace), imtrace.SpanGatewayReceive, trace.SpanKindServer,
//		imtrace.Message{ClientID: f.ID, User: user, Recipient: f.To, Probe: f.Probe})
//	sp.Inject(imtrace.HeaderCarrier(m.Header)) // or imtrace.Field(&req.Trace)
//	... forward the message ...
//	if err != nil {
//		sp.SetError(err)
//	}
//	sp.End()
//
// A hop that has read time.Now() for its own metrics passes it on
// (StartAt, StartLinkedAt, EndAt), so that the span reads no clock of its
// own: two reads of the monotonic clock are a good part of a span's cost.
//
// # Sampling
//
// The rule, exactly:
//
//  1. Head decision, made once per span at Start and never changed: a span
//     whose Message.Probe is true is sampled; otherwise a span with a valid
//     parent takes the parent's sampled flag (the traceparent's flags,
//     ParentBased's default for remote and local parents); a span without
//     one starts a trace, sampled when the SDK's
//     TraceIDRatioBased(Config.Ratio) says so for its trace id (its last
//     eight bytes as a big-endian number, shifted right by one, below
//     Ratio·2^63). The decision rides in the
//     traceparent, so every hop of a trace decides the same.
//  2. A sampled span is exported when it ends.
//  3. An unsampled span is recorded cheaply (no attributes are built, no
//     allocation) and, when it ends, kept in this process's tail buffer
//     (Config.TailBuffer spans in a ring per shard of trace ids), unless it
//     failed (SetError, SetErrorCode) or lasted at least Config.Slow. Then it
//     is exported after all, with imwatch.kept=error or slow, together with
//     every span of its trace that this process ended within
//     Config.TailWindow and still holds: the trace is promoted. For
//     TailWindow after that, further spans of the trace ending in this
//     process are exported too, and the traceparent such a span passes on
//     says sampled, so the hops after it keep theirs.
//  4. A span pushed out of the full tail buffer within TailWindow is counted
//     (Stats.TailDropped); a span that would overflow the export queue
//     (Config.QueueSize) is refused and counted (Stats.ExportDropped).
//
// With Config.TailBuffer negative the tail part is off: an unsampled span
// records nothing (not even its times) and takes no span id of its own: it
// passes its parent's context on, as an untraced hop does; errors and slow
// spans of unsampled traces are not kept.
//
// Promotion is bounded: at most Config.MaxPromotions traces a second
// (DefaultMaxPromotions) per process; past that a failed or slow span stays
// unsampled and is counted (Stats.PromotionsRefused). An overloaded part makes
// every message slow, and promoting them all would add the export of every
// span to its load just then.
//
// Promotion is per process: a hop in another process that ended its
// unsampled span before the failure does not learn of it, so a promoted
// trace holds this process's spans and the later hops' spans, and its
// earlier hops show as missing parents. Spans started through Provider
// follow the head decision only (Sampler).
//
// # Cost
//
// A hop span does not go through the SDK's span implementation: a Span is
// a small handle (do not copy it) to data written once at Start, into the
// pooled sdktrace.ReadOnlySpan record that End hands to the SDK's batch
// span processor (sampled), or into pooled span data that End puts into the
// tail buffer (unsampled); a span that records nothing (unsampled, the tail
// part off) holds only its context. The attributes are
// built from the Message when the exporter first reads the span, on the
// batch processor's goroutine. Neither allocates; the
// figures against the bare SDK are in docs/benchmarks.md ("Tracing: span
// cost"). Tracing switched off (Config.Disabled, or a nil *Tracer) costs a
// nil check: Inject then writes nothing, so a frame or header passes on
// the traceparent it arrived with, unchanged.
package imtrace
