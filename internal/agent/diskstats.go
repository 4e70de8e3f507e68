package agent

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs/blockdevice"
)

// diskstatsCollector reports block device IO from /proc/diskstats, leaving
// out partitions, loop and RAM devices by default (node_exporter's default
// exclusion), so a disk's IO is counted once.
type diskstatsCollector struct {
	fs      blockdevice.FS
	exclude *regexp.Regexp
	descs   diskDescs
}

type diskDescs struct {
	readsCompleted, readsMerged, readBytes, readTime                 *prometheus.Desc
	writesCompleted, writesMerged, writtenBytes, writeTime           *prometheus.Desc
	ioNow, ioTime, ioTimeWeighted                                    *prometheus.Desc
	discardsCompleted, discardsMerged, discardedSectors, discardTime *prometheus.Desc
	flushRequests, flushTime, info                                   *prometheus.Desc
}

// Linux counts disk sectors in 512-byte units in /proc/diskstats whatever
// the device's sector size, and times in milliseconds.
const (
	diskSectorSize = 512
	msPerSecond    = 1000
)

func newDiskstatsCollector(e *env) (Collector, error) {
	re, err := regexp.Compile(e.cfg.DiskDeviceExclude)
	if err != nil {
		return nil, fmt.Errorf("--collector.diskstats.device-exclude: %w", err)
	}
	dev := []string{"device"}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc("node_disk_"+name, help, dev, nil) }
	return &diskstatsCollector{
		fs:      e.block,
		exclude: re,
		descs: diskDescs{
			readsCompleted:    d("reads_completed_total", "Reads completed."),
			readsMerged:       d("reads_merged_total", "Adjacent reads merged into one."),
			readBytes:         d("read_bytes_total", "Bytes read."),
			readTime:          d("read_time_seconds_total", "Seconds spent by all reads (summed over reads in parallel)."),
			writesCompleted:   d("writes_completed_total", "Writes completed."),
			writesMerged:      d("writes_merged_total", "Adjacent writes merged into one."),
			writtenBytes:      d("written_bytes_total", "Bytes written."),
			writeTime:         d("write_time_seconds_total", "Seconds spent by all writes (summed over writes in parallel)."),
			ioNow:             d("io_now", "IOs in progress."),
			ioTime:            d("io_time_seconds_total", "Seconds the device had at least one IO in progress."),
			ioTimeWeighted:    d("io_time_weighted_seconds_total", "Seconds spent doing IOs, weighted by the number in progress."),
			discardsCompleted: d("discards_completed_total", "Discards completed."),
			discardsMerged:    d("discards_merged_total", "Adjacent discards merged into one."),
			discardedSectors:  d("discarded_sectors_total", "Sectors discarded."),
			discardTime:       d("discard_time_seconds_total", "Seconds spent by all discards."),
			flushRequests:     d("flush_requests_total", "Flush requests completed."),
			flushTime:         d("flush_requests_time_seconds_total", "Seconds spent by all flush requests."),
			info: prometheus.NewDesc("node_disk_info", "Block device: major and minor number. model, path, revision, serial and wwn are always empty: node_exporter reads them from udev's database, the agent does not.",
				[]string{"device", "major", "minor", "model", "path", "revision", "serial", "wwn"}, nil),
		},
	}, nil
}

func (c *diskstatsCollector) Update(ch chan<- prometheus.Metric) error {
	stats, err := c.fs.ProcDiskstats()
	if err != nil {
		return fmt.Errorf("diskstats: %w", err)
	}
	emitDiskstats(ch, &c.descs, c.exclude, stats)
	return nil
}

// emitDiskstats converts the devices not excluded. Older kernels have
// fewer fields: discards since 4.18, flushes since 5.5.
func emitDiskstats(ch chan<- prometheus.Metric, d *diskDescs, exclude *regexp.Regexp, stats []blockdevice.Diskstats) {
	counter := func(desc *prometheus.Desc, v float64, dev string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, dev)
	}
	for _, s := range stats {
		dev := s.DeviceName
		if exclude.MatchString(dev) {
			continue
		}
		ch <- prometheus.MustNewConstMetric(d.info, prometheus.GaugeValue, 1, dev,
			strconv.FormatUint(uint64(s.MajorNumber), 10), strconv.FormatUint(uint64(s.MinorNumber), 10), "", "", "", "", "")
		counter(d.readsCompleted, float64(s.ReadIOs), dev)
		counter(d.readsMerged, float64(s.ReadMerges), dev)
		counter(d.readBytes, float64(s.ReadSectors)*diskSectorSize, dev)
		counter(d.readTime, float64(s.ReadTicks)/msPerSecond, dev)
		counter(d.writesCompleted, float64(s.WriteIOs), dev)
		counter(d.writesMerged, float64(s.WriteMerges), dev)
		counter(d.writtenBytes, float64(s.WriteSectors)*diskSectorSize, dev)
		counter(d.writeTime, float64(s.WriteTicks)/msPerSecond, dev)
		ch <- prometheus.MustNewConstMetric(d.ioNow, prometheus.GaugeValue, float64(s.IOsInProgress), dev)
		counter(d.ioTime, float64(s.IOsTotalTicks)/msPerSecond, dev)
		counter(d.ioTimeWeighted, float64(s.WeightedIOTicks)/msPerSecond, dev)
		// IoStatsCount counts the fields read, major, minor and name included.
		if s.IoStatsCount >= 18 {
			counter(d.discardsCompleted, float64(s.DiscardIOs), dev)
			counter(d.discardsMerged, float64(s.DiscardMerges), dev)
			counter(d.discardedSectors, float64(s.DiscardSectors), dev)
			counter(d.discardTime, float64(s.DiscardTicks)/msPerSecond, dev)
		}
		if s.IoStatsCount >= 20 {
			counter(d.flushRequests, float64(s.FlushRequestsCompleted), dev)
			counter(d.flushTime, float64(s.TimeSpentFlushing)/msPerSecond, dev)
		}
	}
}
