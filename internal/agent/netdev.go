package agent

import (
	"fmt"
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// netdevCollector reports bytes, packets, errors and drops per network
// interface from /proc/net/dev, loopback included.
type netdevCollector struct {
	fs      procfs.FS
	exclude *regexp.Regexp // nil: every interface
	descs   [len(netdevFields)]*prometheus.Desc
}

// netdevFields are /proc/net/dev's columns under node_exporter's names.
var netdevFields = [...]struct {
	name, help string
	value      func(l *procfs.NetDevLine) uint64
}{
	{"receive_bytes_total", "Bytes received.", func(l *procfs.NetDevLine) uint64 { return l.RxBytes }},
	{"receive_packets_total", "Packets received.", func(l *procfs.NetDevLine) uint64 { return l.RxPackets }},
	{"receive_errs_total", "Receive errors the driver detected.", func(l *procfs.NetDevLine) uint64 { return l.RxErrors }},
	{"receive_drop_total", "Received packets dropped (no room, or unwanted).", func(l *procfs.NetDevLine) uint64 { return l.RxDropped }},
	{"receive_fifo_total", "Receive FIFO overruns.", func(l *procfs.NetDevLine) uint64 { return l.RxFIFO }},
	{"receive_frame_total", "Receive framing errors.", func(l *procfs.NetDevLine) uint64 { return l.RxFrame }},
	{"receive_compressed_total", "Compressed packets received.", func(l *procfs.NetDevLine) uint64 { return l.RxCompressed }},
	{"receive_multicast_total", "Multicast packets received.", func(l *procfs.NetDevLine) uint64 { return l.RxMulticast }},
	{"transmit_bytes_total", "Bytes transmitted.", func(l *procfs.NetDevLine) uint64 { return l.TxBytes }},
	{"transmit_packets_total", "Packets transmitted.", func(l *procfs.NetDevLine) uint64 { return l.TxPackets }},
	{"transmit_errs_total", "Transmit errors the driver detected.", func(l *procfs.NetDevLine) uint64 { return l.TxErrors }},
	{"transmit_drop_total", "Packets dropped before transmission.", func(l *procfs.NetDevLine) uint64 { return l.TxDropped }},
	{"transmit_fifo_total", "Transmit FIFO underruns.", func(l *procfs.NetDevLine) uint64 { return l.TxFIFO }},
	{"transmit_colls_total", "Collisions while transmitting.", func(l *procfs.NetDevLine) uint64 { return l.TxCollisions }},
	{"transmit_carrier_total", "Carrier losses while transmitting.", func(l *procfs.NetDevLine) uint64 { return l.TxCarrier }},
	{"transmit_compressed_total", "Compressed packets transmitted.", func(l *procfs.NetDevLine) uint64 { return l.TxCompressed }},
}

func newNetdevCollector(e *env) (Collector, error) {
	c := &netdevCollector{fs: e.proc}
	if e.cfg.NetDeviceExclude != "" {
		re, err := regexp.Compile(e.cfg.NetDeviceExclude)
		if err != nil {
			return nil, fmt.Errorf("--collector.netdev.device-exclude: %w", err)
		}
		c.exclude = re
	}
	for i, f := range netdevFields {
		c.descs[i] = prometheus.NewDesc("node_network_"+f.name, f.help, []string{"device"}, nil)
	}
	return c, nil
}

func (c *netdevCollector) Update(ch chan<- prometheus.Metric) error {
	nd, err := c.fs.NetDev()
	if err != nil {
		return fmt.Errorf("netdev: %w", err)
	}
	c.emit(ch, nd)
	return nil
}

func (c *netdevCollector) emit(ch chan<- prometheus.Metric, nd procfs.NetDev) {
	for dev, line := range nd {
		if c.exclude != nil && c.exclude.MatchString(dev) {
			continue
		}
		for i, f := range netdevFields {
			ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(f.value(&line)), dev)
		}
	}
}
