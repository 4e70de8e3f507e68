package agent

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// cpuCollector reports the seconds each CPU spent in each mode, from the
// per-CPU lines of /proc/stat.
type cpuCollector struct {
	fs      procfs.FS
	guest   bool
	seconds *prometheus.Desc
	guestS  *prometheus.Desc
}

func newCPUCollector(e *env) (Collector, error) {
	return &cpuCollector{
		fs:    e.proc,
		guest: e.cfg.CPUGuest,
		seconds: prometheus.NewDesc("node_cpu_seconds_total",
			"Seconds the CPUs spent in each mode.", []string{"cpu", "mode"}, nil),
		guestS: prometheus.NewDesc("node_cpu_guest_seconds_total",
			"Seconds the CPUs spent running guests (virtual CPUs); also counted in node_cpu_seconds_total's user and nice.", []string{"cpu", "mode"}, nil),
	}, nil
}

func (c *cpuCollector) Update(ch chan<- prometheus.Metric) error {
	st, err := c.fs.Stat()
	if err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	emitCPU(ch, c.seconds, c.guestS, c.guest, st.CPU)
	return nil
}

// emitCPU converts per-CPU times (already in seconds) to metrics.
func emitCPU(ch chan<- prometheus.Metric, seconds, guestS *prometheus.Desc, guest bool, cpus map[int64]procfs.CPUStat) {
	for id, s := range cpus {
		cpu := strconv.FormatInt(id, 10)
		for _, m := range []struct {
			mode string
			v    float64
		}{
			{"user", s.User}, {"nice", s.Nice}, {"system", s.System}, {"idle", s.Idle},
			{"iowait", s.Iowait}, {"irq", s.IRQ}, {"softirq", s.SoftIRQ}, {"steal", s.Steal},
		} {
			ch <- prometheus.MustNewConstMetric(seconds, prometheus.CounterValue, m.v, cpu, m.mode)
		}
		if guest {
			ch <- prometheus.MustNewConstMetric(guestS, prometheus.CounterValue, s.Guest, cpu, "user")
			ch <- prometheus.MustNewConstMetric(guestS, prometheus.CounterValue, s.GuestNice, cpu, "nice")
		}
	}
}
