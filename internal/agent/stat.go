package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// statCollector reports the host-wide counters of /proc/stat.
type statCollector struct {
	fs       procfs.FS
	bootTime *prometheus.Desc
	ctxt     *prometheus.Desc
	forks    *prometheus.Desc
	intr     *prometheus.Desc
	running  *prometheus.Desc
	blocked  *prometheus.Desc
}

func newStatCollector(e *env) (Collector, error) {
	return &statCollector{
		fs:       e.proc,
		bootTime: prometheus.NewDesc("node_boot_time_seconds", "When the host booted, in seconds since the Unix epoch.", nil, nil),
		ctxt:     prometheus.NewDesc("node_context_switches_total", "Context switches.", nil, nil),
		forks:    prometheus.NewDesc("node_forks_total", "Processes and threads created (forks and clones).", nil, nil),
		intr:     prometheus.NewDesc("node_intr_total", "Interrupts serviced.", nil, nil),
		running:  prometheus.NewDesc("node_procs_running", "Threads runnable (running or waiting for a CPU).", nil, nil),
		blocked:  prometheus.NewDesc("node_procs_blocked", "Threads blocked waiting for IO to complete.", nil, nil),
	}, nil
}

func (c *statCollector) Update(ch chan<- prometheus.Metric) error {
	st, err := c.fs.Stat()
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	c.emit(ch, st)
	return nil
}

func (c *statCollector) emit(ch chan<- prometheus.Metric, st procfs.Stat) {
	ch <- prometheus.MustNewConstMetric(c.bootTime, prometheus.GaugeValue, float64(st.BootTime))
	ch <- prometheus.MustNewConstMetric(c.ctxt, prometheus.CounterValue, float64(st.ContextSwitches))
	ch <- prometheus.MustNewConstMetric(c.forks, prometheus.CounterValue, float64(st.ProcessCreated))
	ch <- prometheus.MustNewConstMetric(c.intr, prometheus.CounterValue, float64(st.IRQTotal))
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(st.ProcessesRunning))
	ch <- prometheus.MustNewConstMetric(c.blocked, prometheus.GaugeValue, float64(st.ProcessesBlocked))
}
