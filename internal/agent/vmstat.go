package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// vmstatCollector reports selected /proc/vmstat counters (swap in and out,
// page faults, OOM kills) as node_vmstat_FIELD.
//
// /proc/vmstat is the one file the agent parses itself: procfs v0.23 has no
// reader for it (its sysfs package reads the per-NUMA-node vmstat, which
// lacks the host-wide event counters such as pswpin and pgmajfault). The
// file is "name value" lines, so parseVMStat is a few lines and fuzzed.
//
// node_exporter exports these untyped, and so does the agent, so that
// queries and recording rules that look at the type see the same thing.
type vmstatCollector struct {
	path    string
	include *regexp.Regexp

	mu    sync.Mutex
	descs map[string]*prometheus.Desc
}

func newVMStatCollector(e *env) (Collector, error) {
	re, err := regexp.Compile(e.cfg.VMStatFields)
	if err != nil {
		return nil, fmt.Errorf("--collector.vmstat.fields: %w", err)
	}
	return &vmstatCollector{
		path:    filepath.Join(e.cfg.ProcPath, "vmstat"),
		include: re,
		descs:   map[string]*prometheus.Desc{},
	}, nil
}

func (c *vmstatCollector) Update(ch chan<- prometheus.Metric) error {
	data, err := os.ReadFile(c.path)
	if err != nil {
		return fmt.Errorf("vmstat: %w", err)
	}
	fields, err := parseVMStat(data, c.include)
	if err != nil {
		return fmt.Errorf("vmstat: %s: %w", c.path, err)
	}
	for _, f := range fields {
		ch <- prometheus.MustNewConstMetric(c.desc(f.name), prometheus.UntypedValue, f.value)
	}
	return nil
}

func (c *vmstatCollector) desc(field string) *prometheus.Desc {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.descs[field]
	if !ok {
		d = prometheus.NewDesc("node_vmstat_"+field, "/proc/vmstat field "+field+".", nil, nil)
		c.descs[field] = d
	}
	return d
}

type vmstatField struct {
	name  string
	value float64
}

// parseVMStat reads /proc/vmstat's "name value" lines and keeps the fields
// include matches. A malformed line is an error: the kernel never writes one.
func parseVMStat(data []byte, include *regexp.Regexp) ([]vmstatField, error) {
	var out []vmstatField
	for n, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		name, value, ok := bytes.Cut(line, []byte(" "))
		if !ok || len(name) == 0 || !validFieldName(name) {
			return nil, fmt.Errorf("line %d: want \"name value\", got %q", n+1, line)
		}
		if !include.Match(name) {
			continue
		}
		v, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: field %s: %w", n+1, name, err)
		}
		out = append(out, vmstatField{name: string(name), value: float64(v)})
	}
	return out, nil
}

// validFieldName keeps metric names valid whatever the file holds.
func validFieldName(b []byte) bool {
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
