package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// tcpstatCollector counts TCP sockets (IPv4 and IPv6) per state, and, as
// node_exporter does under the same metric, the bytes queued in them:
// "tx_queued_bytes" (sent, not yet acknowledged) and "rx_queued_bytes"
// (received, not yet read; for a listening socket, connections waiting to
// be accepted).
//
// On a real procfs it asks the kernel over netlink (sock_diag), as
// node_exporter does: reading /proc/net/tcp and tcp6 walks the kernel's
// whole connection hash table, sized by RAM, at least twice per file, which
// costs 30 times the netlink dump on a 24 GB host with a few dozen sockets
// (BenchmarkTCPStatSources). On a fixture tree (tests), or if netlink
// fails, it reads /proc/net/tcp{,6} through procfs. Both count the agent's
// own network namespace, as node_exporter does.
//
// Every state is reported, zeros included, so an alert on a state does not
// go silent when its count drops to nothing.
type tcpstatCollector struct {
	fs     procfs.FS
	source atomic.Int32 // a tcpSource; it only moves down the list
	log    *slog.Logger
	states *prometheus.Desc
}

// tcpSource is where the collector reads sockets, best first.
type tcpSource int32

const (
	tcpNetlinkOneRequest tcpSource = iota // TCPDIAG_GETSOCK: both families in one walk
	tcpNetlinkPerFamily                   // SOCK_DIAG_BY_FAMILY: one walk per family
	tcpProcFiles                          // /proc/net/tcp{,6}
)

func (s tcpSource) String() string {
	return [...]string{"netlink TCPDIAG_GETSOCK", "netlink SOCK_DIAG_BY_FAMILY", "/proc/net/tcp{,6}"}[s]
}

// tcpStates are the kernel's TCP states (include/net/tcp_states.h), by
// number, under node_exporter's label values.
var tcpStates = [...]string{
	1:  "established",
	2:  "syn_sent",
	3:  "syn_recv",
	4:  "fin_wait1",
	5:  "fin_wait2",
	6:  "time_wait",
	7:  "close",
	8:  "close_wait",
	9:  "last_ack",
	10: "listen",
	11: "closing",
}

func newTCPStatCollector(e *env) (Collector, error) {
	c := &tcpstatCollector{
		fs:  e.proc,
		log: e.log.With("collector", "tcpstat"),
		states: prometheus.NewDesc("node_tcp_connection_states",
			"TCP sockets in each state; state=\"tx_queued_bytes\" and \"rx_queued_bytes\" are the bytes in their send and receive queues.",
			[]string{"state"}, nil),
	}
	if !isProcfs(e.cfg.ProcPath) {
		c.source.Store(int32(tcpProcFiles))
	}
	return c, nil
}

// procSuperMagic is procfs's statfs type (linux/magic.h).
const procSuperMagic = 0x9fa0

// isProcfs says whether path is a mounted procfs rather than a fixture.
func isProcfs(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == procSuperMagic
}

// tcpCounts is what one scrape found.
type tcpCounts struct {
	states   [len(tcpStates)]float64
	txQueued float64
	rxQueued float64
	// port, if not 0, counts only the sockets with this local or remote
	// port, so that a test can tell its own sockets from the host's.
	port uint64
}

func (n *tcpCounts) add(state, txQueue, rxQueue, localPort, remotePort uint64) {
	if n.port != 0 && localPort != n.port && remotePort != n.port {
		return
	}
	if state < uint64(len(tcpStates)) && tcpStates[state] != "" {
		n.states[state]++
	}
	n.txQueued += float64(txQueue)
	n.rxQueued += float64(rxQueue)
}

func (c *tcpstatCollector) Update(ch chan<- prometheus.Metric) error {
	for {
		src := tcpSource(c.source.Load())
		var n tcpCounts
		var err error
		switch src {
		case tcpNetlinkOneRequest, tcpNetlinkPerFamily:
			err = netlinkTCPCounts(&n, src == tcpNetlinkOneRequest)
		default:
			if err := c.readProcFiles(&n); err != nil {
				return err
			}
		}
		if err == nil {
			c.emit(ch, &n)
			return nil
		}
		if c.source.CompareAndSwap(int32(src), int32(src+1)) {
			c.log.Warn("reading TCP sockets failed: trying the next way from now on, which may cost more CPU",
				"failed", src.String(), "next", (src + 1).String(), "err", err)
		}
	}
}

func (c *tcpstatCollector) readProcFiles(n *tcpCounts) error {
	v4, err := c.fs.NetTCP()
	if err != nil {
		return fmt.Errorf("tcpstat: %w", err)
	}
	for _, s := range v4 {
		n.add(s.St, s.TxQueue, s.RxQueue, s.LocalPort, s.RemPort)
	}
	// No tcp6 on a kernel without IPv6.
	v6, err := c.fs.NetTCP6()
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("tcpstat: %w", err)
	default:
		for _, s := range v6 {
			n.add(s.St, s.TxQueue, s.RxQueue, s.LocalPort, s.RemPort)
		}
	}
	return nil
}

func (c *tcpstatCollector) emit(ch chan<- prometheus.Metric, n *tcpCounts) {
	for st, name := range tcpStates {
		if name != "" {
			ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, n.states[st], name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, n.txQueued, "tx_queued_bytes")
	ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, n.rxQueued, "rx_queued_bytes")
}
