package center

import (
	"fmt"
	"net/http"

	"github.com/imwatch/imwatch/internal/center/api"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/traces"
)

// traceSide is the center's trace side: the OTLP receivers, the trace
// store, the query API, and what is derived from spans.
type traceSide struct {
	store    *traces.DiskStore
	receiver *traces.Receiver
	api      *traces.API
	grpc     *traces.GRPCServer
	metrics  *traces.SpanMetrics
	broken   *traces.BrokenDetector
}

func traceLimits(t config.Traces) traces.ReceiverLimits {
	return traces.ReceiverLimits{
		MaxBodySize:    int64(t.MaxBodySize),
		MaxDecodedSize: int64(t.MaxDecodedSize),
		Limits: traces.Limits{
			MaxSpans:    t.MaxSpansPerRequest,
			MaxSpanSize: int(t.MaxSpanSize),
			Retention:   int64(t.Retention),
			MaxFuture:   int64(traces.MaxFuture),
		},
		QueueSpans:    t.QueueSpans,
		MaxConcurrent: t.MaxConcurrent,
	}
}

func (c *Center) startTraces(cfg *config.Config) error {
	t := cfg.Traces
	var err error
	ts := &traceSide{}
	ts.store, err = traces.OpenDisk(traces.DiskOptions{
		Dir: cfg.TracesPath(), Fsync: t.WALFsync, Retention: t.Retention.D(), RetentionSize: int64(t.RetentionSize),
		HeadMaxSpans: t.HeadMaxSpans, HeadMaxAge: t.HeadMaxAge.D(),
	}, c.reg, c.base.With("component", "trace-store"))
	if err != nil {
		return fmt.Errorf("open trace store: %w", err)
	}
	c.traces = ts
	ts.metrics = traces.NewSpanMetrics(c.store, t.MetricsInterval.D(), t.MetricsMaxSeries, c.reg, c.base.With("component", "span-metrics"))
	ts.broken = traces.NewBrokenDetector(ts.store, ts.metrics, t.MissingParentGrace.D(), t.GapThreshold.D(), c.reg, c.base.With("component", "broken-traces"))
	ts.receiver = traces.NewReceiver(ts.store, traceLimits(t), []traces.Observer{ts.metrics, ts.broken}, c.reg, c.base.With("component", "otlp"))
	ts.api = &traces.API{Store: ts.store, Grace: t.MissingParentGrace.D(), GapThreshold: t.GapThreshold.D(),
		Log: c.base.With("component", "trace-api"), WriteError: api.WriteError}
	if t.GRPCListen != "" {
		ts.grpc, err = traces.ListenGRPC(t.GRPCListen, ts.receiver, c.grpcToken, int(t.MaxDecodedSize), c.base.With("component", "otlp-grpc"))
		if err != nil {
			return err
		}
	}
	return nil
}

// grpcToken is the bearer token the gRPC receiver wants, "" for none.
func (c *Center) grpcToken() string {
	if tok := c.token.Load(); tok != nil {
		return *tok
	}
	return ""
}

func (c *Center) traceRoutes(mux *http.ServeMux, auth func(http.Handler) http.Handler) {
	ts := c.traces
	mux.Handle("POST /v1/traces", auth(ts.receiver))
	mux.Handle("/v1/traces", auth(ts.receiver)) // 405 for other methods
	ts.api.Register(mux, auth)
}

// stopTraces stops the receivers (storing what they queued), flushes the
// span metrics and closes the trace store.
func (c *Center) stopTraces() error {
	ts := c.traces
	if ts == nil {
		return nil
	}
	if ts.grpc != nil {
		ts.grpc.Stop()
	}
	if ts.receiver != nil {
		ts.receiver.Stop()
	}
	if ts.broken != nil {
		ts.broken.Stop()
	}
	if ts.metrics != nil {
		ts.metrics.Stop()
	}
	var err error
	if ts.store != nil {
		if e := ts.store.Close(); e != nil {
			err = fmt.Errorf("close trace store: %w", e)
		}
	}
	return err
}

// traceImmutable lists the keys of the traces section only a restart changes.
func traceImmutable(cfg, old *config.Config) []string {
	var keys []string
	if cfg.TracesPath() != old.TracesPath() {
		keys = append(keys, "traces.path")
	}
	n, o := cfg.Traces, old.Traces
	for _, k := range []struct {
		name    string
		changed bool
	}{
		{"traces.wal_fsync", n.WALFsync != o.WALFsync},
		{"traces.grpc_listen", n.GRPCListen != o.GRPCListen},
		{"traces.head_max_spans", n.HeadMaxSpans != o.HeadMaxSpans},
		{"traces.head_max_age", n.HeadMaxAge != o.HeadMaxAge},
		{"traces.metrics_interval", n.MetricsInterval != o.MetricsInterval},
		{"traces.metrics_max_series", n.MetricsMaxSeries != o.MetricsMaxSeries},
	} {
		if k.changed {
			keys = append(keys, k.name)
		}
	}
	return keys
}

// applyTraces swaps what of the traces section can change while running.
func (c *Center) applyTraces(cfg *config.Config) {
	ts := c.traces
	t := cfg.Traces
	ts.receiver.SetLimits(traceLimits(t))
	ts.store.SetRetention(t.Retention.D(), int64(t.RetentionSize))
	ts.api.SetAnalysis(t.MissingParentGrace.D(), t.GapThreshold.D())
	ts.broken.SetAnalysis(t.MissingParentGrace.D(), t.GapThreshold.D())
}

// OTLPGRPCAddr is the address of the OTLP/gRPC receiver, "" when it is off.
func (c *Center) OTLPGRPCAddr() string {
	if c.traces == nil || c.traces.grpc == nil {
		return ""
	}
	return c.traces.grpc.Addr()
}

// TraceStore is the trace store; nil before Start.
func (c *Center) TraceStore() traces.Store {
	if c.traces == nil {
		return nil
	}
	return c.traces.store
}
