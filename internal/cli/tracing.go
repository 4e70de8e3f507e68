package cli

import (
	"context"
	"flag"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

// defaultTracingEndpoint is the center's OTLP/HTTP receiver at its default address.
const defaultTracingEndpoint = "http://" + config.DefaultListen + "/v1/traces"

// tracingFlags set how a part traces messages (pkg/imtrace).
type tracingFlags struct {
	on       bool
	endpoint string
	ratio    float64
	slow     time.Duration
	compress string
}

func (t *tracingFlags) register(fs *flag.FlagSet, defaultOn bool) {
	fs.BoolVar(&t.on, "tracing", defaultOn, "trace messages and send the spans to --tracing-endpoint; with false no spans are made and the trace context of frames and bus messages is passed on unchanged")
	fs.StringVar(&t.endpoint, "tracing-endpoint", defaultTracingEndpoint, "OTLP/HTTP traces URL: the center's /v1/traces, or any OTLP receiver")
	fs.Float64Var(&t.ratio, "tracing-ratio", imtrace.DefaultRatio, "share of messages traced, 0 to 1, decided once per message from its trace id; probe messages, failed and slow ones are always kept")
	fs.StringVar(&t.compress, "tracing-compression", "auto", "compression of the OTLP requests: gzip; none where bandwidth is cheap (the center on this host or LAN) to save the CPU gzip takes; auto: none to a loopback endpoint, gzip to any other")
	fs.DurationVar(&t.slow, "tracing-slow", imtrace.DefaultSlow, "a hop that takes this long keeps its message's trace although it was not sampled; negative: never")
}

// template is the imtrace configuration the flags say, Service and
// Instance left to the part; nil when tracing is off.
func (t *tracingFlags) template() (*imtrace.Config, error) {
	if !t.on {
		return nil, nil
	}
	cfg := imtrace.Config{Service: "imwatch", Endpoint: t.endpoint, Ratio: t.ratio, Slow: t.slow, Compression: t.compress}
	if t.slow == 0 {
		cfg.Slow = -1 // 0 would mean the default
	}
	if err := cfg.Validate(); err != nil {
		return nil, usagef("tracing flags: %v", err)
	}
	return &cfg, nil
}

// tracer makes the tracer of one part (service, instance); nil when tracing
// is off. stop shuts it down, flushing its spans.
func (t *tracingFlags) tracer(service, instance string) (tr *imtrace.Tracer, stop func(), err error) {
	tmpl, err := t.template()
	if err != nil || tmpl == nil {
		return nil, func() {}, err
	}
	tmpl.Service, tmpl.Instance = service, instance
	tr, err = imtrace.New(*tmpl)
	if err != nil {
		return nil, func() {}, usageError{err}
	}
	return tr, func() {
		// Bounded: a center that is gone must not hold the stop up.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = tr.Shutdown(ctx)
	}, nil
}
