package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// pressureCollector reports pressure stall information: the time in which
// some (waiting) or all (stalled) non-idle tasks were held up for want of
// CPU, memory or IO. Kernels without PSI have no /proc/pressure; the
// collector then returns ErrNoData.
type pressureCollector struct {
	fs        procfs.FS
	cpuSome   *prometheus.Desc
	ioSome    *prometheus.Desc
	ioFull    *prometheus.Desc
	memSome   *prometheus.Desc
	memFull   *prometheus.Desc
	resources []string
}

func newPressureCollector(e *env) (Collector, error) {
	return &pressureCollector{
		fs:        e.proc,
		cpuSome:   prometheus.NewDesc("node_pressure_cpu_waiting_seconds_total", "Seconds in which some runnable tasks waited for a CPU.", nil, nil),
		ioSome:    prometheus.NewDesc("node_pressure_io_waiting_seconds_total", "Seconds in which some tasks waited for IO.", nil, nil),
		ioFull:    prometheus.NewDesc("node_pressure_io_stalled_seconds_total", "Seconds in which all non-idle tasks were stalled on IO.", nil, nil),
		memSome:   prometheus.NewDesc("node_pressure_memory_waiting_seconds_total", "Seconds in which some tasks waited for memory.", nil, nil),
		memFull:   prometheus.NewDesc("node_pressure_memory_stalled_seconds_total", "Seconds in which all non-idle tasks were stalled on memory.", nil, nil),
		resources: []string{"cpu", "io", "memory"},
	}, nil
}

func (c *pressureCollector) Update(ch chan<- prometheus.Metric) error {
	for _, res := range c.resources {
		st, err := c.fs.PSIStatsForResource(res)
		if err != nil {
			// No /proc/pressure: kernel without PSI. EOPNOTSUPP: built
			// with PSI but booted with psi=0.
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EOPNOTSUPP) {
				return ErrNoData
			}
			return fmt.Errorf("pressure %s: %w", res, err)
		}
		c.emit(ch, res, st)
	}
	return nil
}

// emit converts one resource's totals (microseconds) to seconds.
func (c *pressureCollector) emit(ch chan<- prometheus.Metric, res string, st procfs.PSIStats) {
	sec := func(l *procfs.PSILine) float64 { return float64(l.Total) / 1e6 }
	switch res {
	case "cpu":
		if st.Some != nil {
			ch <- prometheus.MustNewConstMetric(c.cpuSome, prometheus.CounterValue, sec(st.Some))
		}
	case "io":
		if st.Some != nil {
			ch <- prometheus.MustNewConstMetric(c.ioSome, prometheus.CounterValue, sec(st.Some))
		}
		if st.Full != nil {
			ch <- prometheus.MustNewConstMetric(c.ioFull, prometheus.CounterValue, sec(st.Full))
		}
	case "memory":
		if st.Some != nil {
			ch <- prometheus.MustNewConstMetric(c.memSome, prometheus.CounterValue, sec(st.Some))
		}
		if st.Full != nil {
			ch <- prometheus.MustNewConstMetric(c.memFull, prometheus.CounterValue, sec(st.Full))
		}
	}
}
