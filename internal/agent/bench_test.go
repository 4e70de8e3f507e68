package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkCollectors measures each collector on this host's /proc, the
// cost of one Update and of draining its metrics.
func BenchmarkCollectors(b *testing.B) {
	cfg := DefaultConfig()
	e := newEnv(b, cfg)
	for _, entry := range collectors {
		b.Run(entry.name, func(b *testing.B) {
			c, err := entry.new(e)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if r := runCollector(c); r.err != nil {
					b.Fatal(r.err)
				}
			}
		})
	}
}

// BenchmarkScrape measures a whole scrape: every collector, gathered and
// sorted by the registry as promhttp does.
func BenchmarkScrape(b *testing.B) {
	a, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Gatherer().Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

var _ prometheus.Collector = (*Agent)(nil)

// BenchmarkTCPStatSources compares the three ways the tcpstat collector
// can read this host's TCP sockets.
func BenchmarkTCPStatSources(b *testing.B) {
	e := newEnv(b, DefaultConfig())
	c, err := newTCPStatCollector(e)
	if err != nil {
		b.Fatal(err)
	}
	tc := c.(*tcpstatCollector)
	for _, s := range []struct {
		name string
		read func(n *tcpCounts) error
	}{
		{"netlink-one-request", func(n *tcpCounts) error { return netlinkTCPCounts(n, true) }},
		{"netlink-per-family", func(n *tcpCounts) error { return netlinkTCPCounts(n, false) }},
		{"proc-net-tcp", tc.readProcFiles},
	} {
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var n tcpCounts
				if err := s.read(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
