package imtrace

import (
	"context"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Sampler is the head sampler of the package as an SDK sampler, for spans
// started through Tracer.Provider (or any SDK TracerProvider) to agree with
// the hop spans: ParentBased over TraceIDRatioBased(ratio), and a span with
// the attribute imwatch.probe=true is sampled whatever its parent says.
func Sampler(ratio float64) sdktrace.Sampler {
	return sdktrace.ParentBased(probeOr{sdktrace.TraceIDRatioBased(ratio)},
		sdktrace.WithRemoteParentNotSampled(probeOr{sdktrace.NeverSample()}),
		sdktrace.WithLocalParentNotSampled(probeOr{sdktrace.NeverSample()}))
}

// probeOr samples probe spans and leaves every other decision to next.
type probeOr struct{ next sdktrace.Sampler }

func (p probeOr) ShouldSample(sp sdktrace.SamplingParameters) sdktrace.SamplingResult {
	for _, a := range sp.Attributes {
		if a.Key == KeyProbe && a.Value.AsBool() {
			return sdktrace.SamplingResult{
				Decision:   sdktrace.RecordAndSample,
				Tracestate: trace.SpanContextFromContext(sp.ParentContext).TraceState(),
			}
		}
	}
	return p.next.ShouldSample(sp)
}

func (p probeOr) Description() string { return "ProbeOr{" + p.next.Description() + "}" }

// sampled is the head decision of a hop span, the same as Sampler's: a probe
// is sampled; a span with a valid parent follows the parent's sampled flag
// (ParentBased's default for both remote and local parents); a root asks the
// SDK's TraceIDRatioBased sampler about its trace id. It does not allocate:
// the root's sampling parameters hold no context with a span.
func (t *Tracer) sampled(parent trace.SpanContext, tid trace.TraceID, name string, kind trace.SpanKind, probe bool) bool {
	if probe {
		return true
	}
	if parent.IsValid() {
		return parent.IsSampled()
	}
	return t.ratio.ShouldSample(sdktrace.SamplingParameters{
		ParentContext: context.Background(), TraceID: tid, Name: name, Kind: kind,
	}).Decision == sdktrace.RecordAndSample
}
