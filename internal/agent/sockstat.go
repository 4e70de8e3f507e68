package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// sockstatCollector reports sockets in use per protocol, and the memory
// they hold, from /proc/net/sockstat and /proc/net/sockstat6, one gauge per
// field as node_exporter names them: node_sockstat_PROTO_FIELD.
type sockstatCollector struct {
	fs       procfs.FS
	pageSize float64

	mu    sync.Mutex
	descs map[string]*prometheus.Desc
}

func newSockstatCollector(e *env) (Collector, error) {
	return &sockstatCollector{fs: e.proc, pageSize: float64(e.cfg.PageSize), descs: map[string]*prometheus.Desc{}}, nil
}

func (c *sockstatCollector) Update(ch chan<- prometheus.Metric) error {
	v4, err := c.fs.NetSockstat()
	if err != nil {
		return fmt.Errorf("sockstat: %w", err)
	}
	c.emit(ch, v4)
	// No sockstat6 on a kernel without IPv6.
	v6, err := c.fs.NetSockstat6()
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("sockstat6: %w", err)
	default:
		c.emit(ch, v6)
	}
	return nil
}

func (c *sockstatCollector) emit(ch chan<- prometheus.Metric, s *procfs.NetSockstat) {
	gauge := func(name string, v float64) {
		ch <- prometheus.MustNewConstMetric(c.desc(name), prometheus.GaugeValue, v)
	}
	if s.Used != nil {
		gauge("sockets_used", float64(*s.Used))
	}
	for _, p := range s.Protocols {
		gauge(p.Protocol+"_inuse", float64(p.InUse))
		for _, f := range []struct {
			name string
			v    *int
		}{{"orphan", p.Orphan}, {"tw", p.TW}, {"alloc", p.Alloc}, {"mem", p.Mem}, {"memory", p.Memory}} {
			if f.v != nil {
				gauge(p.Protocol+"_"+f.name, float64(*f.v))
			}
		}
		// mem is in pages; node_exporter adds it in bytes too.
		if p.Mem != nil {
			gauge(p.Protocol+"_mem_bytes", float64(*p.Mem)*c.pageSize)
		}
	}
}

func (c *sockstatCollector) desc(field string) *prometheus.Desc {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.descs[field]
	if !ok {
		d = prometheus.NewDesc("node_sockstat_"+field, "Sockets statistic "+field+" from /proc/net/sockstat{,6}.", nil, nil)
		c.descs[field] = d
	}
	return d
}
