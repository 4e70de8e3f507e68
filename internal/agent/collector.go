package agent

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/blockdevice"
)

// Collector reads one group of host metrics (one kernel file or a few) and
// sends them to ch. It is called once per scrape, possibly concurrently with
// other collectors but never with itself unless the agent is scraped twice at
// once, so an implementation that keeps state guards it.
type Collector interface {
	Update(ch chan<- prometheus.Metric) error
}

// ErrNoData is returned by a collector that found nothing to report on this
// host, for example pressure on a kernel built without PSI. The scrape goes
// on; the collector's node_scrape_collector_success is 0 and it is logged at
// debug level only.
var ErrNoData = errors.New("collector returned no data")

// env is what a collector's constructor gets: the configuration and the
// filesystems every read goes through, so that a test can point the whole
// agent at a fixture tree.
type env struct {
	cfg   Config
	proc  procfs.FS
	block blockdevice.FS
	log   *slog.Logger
}

// collectorEntry registers one collector under the name its flags use
// (--collector.NAME, --no-collector.NAME), the same name node_exporter uses
// where node_exporter has the collector.
type collectorEntry struct {
	name string
	help string
	new  func(e *env) (Collector, error)
}

// collectors is the one list of collectors, in priority order: when a scrape
// would exceed Config.MaxSeries, the collectors at the end of this list are
// the ones dropped.
var collectors = []collectorEntry{
	{"cpu", "seconds each CPU spent in each mode (/proc/stat)", newCPUCollector},
	{"loadavg", "load averages (/proc/loadavg)", newLoadavgCollector},
	{"meminfo", "memory usage (/proc/meminfo)", newMeminfoCollector},
	{"stat", "boot time, context switches, forks, interrupts, runnable and blocked processes (/proc/stat)", newStatCollector},
	{"vmstat", "paging and swapping counters (/proc/vmstat)", newVMStatCollector},
	{"pressure", "pressure stall information (/proc/pressure)", newPressureCollector},
	{"diskstats", "block device IO (/proc/diskstats)", newDiskstatsCollector},
	{"filesystem", "filesystem size and free space (/proc/1/mountinfo, statfs)", newFilesystemCollector},
	{"netdev", "network interface bytes, packets, errors, drops (/proc/net/dev)", newNetdevCollector},
	{"sockstat", "sockets in use per protocol (/proc/net/sockstat{,6})", newSockstatCollector},
	{"tcpstat", "TCP connections per state (/proc/net/tcp{,6})", newTCPStatCollector},
	{"process", "CPU, memory, file descriptors and threads of the imwatch processes (/proc/PID)", newProcessCollector},
}

// CollectorInfo describes a collector for the command line.
type CollectorInfo struct {
	Name string
	Help string
}

// Collectors lists every collector, in priority order. All are on by default.
func Collectors() []CollectorInfo {
	out := make([]CollectorInfo, len(collectors))
	for i, c := range collectors {
		out[i] = CollectorInfo{Name: c.name, Help: c.help}
	}
	return out
}

func knownCollector(name string) bool {
	for _, c := range collectors {
		if c.name == name {
			return true
		}
	}
	return false
}

// namedCollector is a constructed collector with its name.
type namedCollector struct {
	name string
	c    Collector
}

func buildCollectors(e *env) ([]namedCollector, error) {
	var out []namedCollector
	for _, entry := range collectors {
		if !e.cfg.enabled(entry.name) {
			continue
		}
		c, err := entry.new(e)
		if err != nil {
			return nil, fmt.Errorf("collector %s: %w", entry.name, err)
		}
		out = append(out, namedCollector{name: entry.name, c: c})
	}
	return out, nil
}
