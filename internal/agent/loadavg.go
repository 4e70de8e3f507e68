package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// loadavgCollector reports the 1, 5 and 15 minute load averages.
type loadavgCollector struct {
	fs    procfs.FS
	descs [3]*prometheus.Desc
}

func newLoadavgCollector(e *env) (Collector, error) {
	c := &loadavgCollector{fs: e.proc}
	for i, m := range []string{"1", "5", "15"} {
		c.descs[i] = prometheus.NewDesc("node_load"+m,
			m+"m load average: runnable plus uninterruptible threads, exponentially averaged.", nil, nil)
	}
	return c, nil
}

func (c *loadavgCollector) Update(ch chan<- prometheus.Metric) error {
	l, err := c.fs.LoadAvg()
	if err != nil {
		return fmt.Errorf("loadavg: %w", err)
	}
	for i, v := range []float64{l.Load1, l.Load5, l.Load15} {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, v)
	}
	return nil
}
