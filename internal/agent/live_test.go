package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// These tests run the agent on this machine's real /proc.

// startServer serves a on a free loopback port until the test ends.
func startServer(t testing.TB, a *Agent) *Server {
	t.Helper()
	s := NewServer("127.0.0.1:0", a)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return s
}

func newLiveAgent(t testing.TB, edit func(*Config)) *Agent {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Log = testLogger()
	if edit != nil {
		edit(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// scrape fetches url and parses the text exposition.
func scrape(url string) (map[string]*dto.MetricFamily, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	return mfs, body, err
}

func mustScrape(t testing.TB, url string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	mfs, body, err := scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return mfs, body
}

// TestLiveSeriesBudget: with the defaults, this host's scrape stays within
// 1,000 series and every collector succeeds.
func TestLiveSeriesBudget(t *testing.T) {
	a := newLiveAgent(t, nil)
	mfs := families(t, a.Gatherer())
	n := seriesCount(mfs)
	t.Logf("default scrape on this host: %d series from %d families", n, len(mfs))
	if n > DefaultMaxSeries {
		t.Errorf("%d series, want at most %d", n, DefaultMaxSeries)
	}
	if v, _ := value(mfs, "imwatch_agent_series", nil); int(v) != n {
		t.Errorf("imwatch_agent_series = %v, scrape has %d", v, n)
	}
	if v, _ := value(mfs, "imwatch_agent_series_dropped_total", nil); v != 0 {
		t.Errorf("dropped %v series", v)
	}
	for _, name := range a.CollectorNames() {
		if v, ok := value(mfs, "node_scrape_collector_success", map[string]string{"collector": name}); !ok || v != 1 {
			t.Errorf("collector %s: success %v", name, v)
		}
	}
}

// TestLiveLoopbackPackets sends a known number of UDP datagrams over
// loopback and sees lo's packet counters rise by at least that much.
func TestLiveLoopbackPackets(t *testing.T) {
	a := newLiveAgent(t, func(c *Config) { c.DisableDefaults = true; c.Enabled["netdev"] = true })
	url := "http://" + startServer(t, a).Addr() + "/metrics"
	lo := map[string]string{"device": "lo"}
	mfs, _ := mustScrape(t, url)
	txBefore, ok := value(mfs, "node_network_transmit_packets_total", lo)
	if !ok {
		t.Fatal(`node_network_transmit_packets_total{device="lo"} missing`)
	}
	rxBefore, _ := value(mfs, "node_network_receive_packets_total", lo)

	rcv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	snd, err := net.DialUDP("udp", nil, rcv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	const packets = 500
	for i := 0; i < packets; i++ {
		if _, err := snd.Write([]byte("imwatch agent loopback test")); err != nil {
			t.Fatal(err)
		}
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		mfs, _, err := scrape(url)
		if err != nil {
			return err
		}
		tx, _ := value(mfs, "node_network_transmit_packets_total", lo)
		rx, _ := value(mfs, "node_network_receive_packets_total", lo)
		if tx-txBefore < packets || rx-rxBefore < packets {
			return fmt.Errorf("lo transmit rose by %v, receive by %v; want at least %d", tx-txBefore, rx-rxBefore, packets)
		}
		t.Logf("lo transmit packets rose by %v, receive by %v, after sending %d", tx-txBefore, rx-rxBefore, packets)
		return nil
	})
}

// TestLiveTCPStatSources: the three ways of reading TCP sockets (netlink
// with one request, netlink per family, /proc/net/tcp{,6}) count the same
// sockets, IPv6 ones included.
func TestLiveTCPStatSources(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	c, err := newTCPStatCollector(e)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*tcpstatCollector)
	if src := tcpSource(tc.source.Load()); src != tcpNetlinkOneRequest {
		t.Fatalf("the tcpstat collector reads %s on /proc, want %s", src, tcpNetlinkOneRequest)
	}
	// Each listener gets three connections: both ends of each, and the
	// listener, carry its port.
	open := func(network, addr string) uint64 {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		for i := 0; i < 3; i++ {
			c, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			if _, err := c.Write([]byte("unread")); err != nil {
				t.Fatal(err)
			}
		}
		return uint64(l.Addr().(*net.TCPAddr).Port)
	}
	ports := map[string]uint64{"IPv4": open("tcp4", "127.0.0.1:0")}
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		ports["IPv6"] = open("tcp6", "[::1]:0")
	} else {
		t.Logf("no IPv6 loopback (%v): IPv4 only", err)
	}
	const established, listen = 1, 10
	for family, port := range ports {
		imtest.Eventually(t, 10*time.Second, func() error {
			counts := map[string]*tcpCounts{
				"netlink, one request":    {port: port},
				"netlink, one per family": {port: port},
				"/proc/net/tcp{,6}":       {port: port},
			}
			if err := netlinkTCPCounts(counts["netlink, one request"], true); err != nil {
				return err
			}
			if err := netlinkTCPCounts(counts["netlink, one per family"], false); err != nil {
				return err
			}
			if err := tc.readProcFiles(counts["/proc/net/tcp{,6}"]); err != nil {
				return err
			}
			for src, n := range counts {
				if n.states[established] != 6 || n.states[listen] != 1 || n.rxQueued != 3*6 || n.txQueued != 0 {
					return fmt.Errorf("%s port %d, %s: %v established, %v listening, %v bytes received and unread, %v unacknowledged; want 6, 1, 18, 0",
						family, port, src, n.states[established], n.states[listen], n.rxQueued, n.txQueued)
				}
			}
			return nil
		})
	}
}

// TestLiveProcess reports this test binary as if it were imwatch.
func TestLiveProcess(t *testing.T) {
	name := filepath.Base(os.Args[0])
	if len(name) > commLen {
		name = name[:commLen]
	}
	a := newLiveAgent(t, func(c *Config) {
		c.DisableDefaults = true
		c.Enabled["process"] = true
		c.ProcessNames = []string{name}
	})
	mfs := families(t, a.Gatherer())
	self := map[string]string{"pid": strconv.Itoa(os.Getpid()), "name": name}
	for _, c := range []struct {
		family string
		min    float64
	}{
		{"imwatch_process_threads", 1},
		{"imwatch_process_open_fds", 3},
		{"imwatch_process_max_fds", 3},
		{"imwatch_process_resident_memory_bytes", 1 << 20},
		{"imwatch_process_virtual_memory_bytes", 1 << 20},
		{"imwatch_process_cpu_seconds_total", 0},
		{"imwatch_process_start_time_seconds", float64(time.Now().Add(-24 * time.Hour).Unix())},
	} {
		v, ok := value(mfs, c.family, self)
		if !ok || v < c.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", c.family, self, v, ok, c.min)
		}
	}
	if v, _ := value(mfs, "imwatch_process_start_time_seconds", self); v > float64(time.Now().Unix()+1) {
		t.Errorf("start time %v is in the future", v)
	}
	if v, _ := value(mfs, "imwatch_process_matched", map[string]string{"name": name}); v < 1 {
		t.Errorf("imwatch_process_matched = %v", v)
	}
}

// TestServerRefusesTooManyScrapes: scrapes beyond the bound get 503 and
// are counted.
func TestServerRefusesTooManyScrapes(t *testing.T) {
	a := newFixtureAgent(t, fixtureConfig())
	a.cfg.MaxConcurrentScrapes = 1
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	a.collectors = append(a.collectors, namedCollector{"slow", collectorFunc(func(chan<- prometheus.Metric) error {
		select {
		case entered <- struct{}{}:
			<-release
		default:
		}
		return nil
	})})
	a.reserved = reservedSeries(len(a.collectors))
	url := "http://" + startServer(t, a).Addr() + "/metrics"
	first := make(chan error, 1)
	go func() { _, _, err := scrape(url); first <- err }()
	<-entered
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second scrape: %s, want 503", resp.Status)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first scrape: %v", err)
	}
	mfs, _ := mustScrape(t, url)
	if v, _ := value(mfs, "imwatch_agent_scrapes_refused_total", nil); v != 1 {
		t.Errorf("imwatch_agent_scrapes_refused_total = %v, want 1", v)
	}
}
