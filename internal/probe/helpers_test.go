package probe

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
	dto "github.com/prometheus/client_model/go"
)

// metricValue sums the samples of family name whose labels include want
// (a histogram's sample count).
func metricValue(t testing.TB, p *Prober, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// imwatchTarget is an imwatch target at the gateway url, signing with the test secret.
func imwatchTarget(t testing.TB, name, url string, interval, timeout time.Duration, accounts ...string) Target {
	t.Helper()
	tg := Target{Name: name, Protocol: ProtoIMWatch, Address: url, Interval: config.Duration(interval),
		Timeout: config.Duration(timeout), Secret: imtest.Secret, SecretEnv: "UNUSED"}
	for _, a := range accounts {
		tg.Accounts = append(tg.Accounts, Account{User: a})
	}
	return tg
}

// startProber starts a prober with cfg (buffer in a temporary directory
// unless set) and stops it at cleanup.
func startProber(t testing.TB, cfg Config, opts Options) *Prober {
	t.Helper()
	if cfg.Buffer == "" || cfg.Buffer == Default().Buffer {
		cfg.Buffer = filepath.Join(t.TempDir(), "buffer")
	}
	if cfg.Location == "" {
		cfg.Location = "test"
	}
	if cfg.BufferMaxSize == 0 {
		cfg.BufferMaxSize = Default().BufferMaxSize
	}
	if cfg.Center.Timeout == 0 {
		cfg.Center.Timeout = config.Duration(5 * time.Second)
	}
	if cfg.Center.PushInterval == 0 {
		cfg.Center.PushInterval = config.Duration(time.Second)
	}
	if opts.Log == nil {
		opts.Log = imtest.Logger()
	}
	p, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("new prober: %v", err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatalf("start prober: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		p.Stop(ctx)
	})
	return p
}

// atLeast returns a poll function: the metric reaches n.
func atLeast(t testing.TB, p *Prober, name string, labels map[string]string, n float64) func() error {
	return func() error {
		if v := metricValue(t, p, name, labels); v < n {
			return fmt.Errorf("%s%v = %g, want >= %g", name, labels, v, n)
		}
		return nil
	}
}

func contains(s string, subs ...string) bool {
	for _, x := range subs {
		if x != "" && strings.Contains(s, x) {
			return true
		}
	}
	return false
}

var lookupEnv = os.LookupEnv

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
