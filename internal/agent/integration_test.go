package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	dto "github.com/prometheus/client_model/go"
)

// These tests run the real Debian binaries: promtool and prometheus
// (package prometheus) and prometheus-node-exporter. Without them they are
// skipped, or fail with IMWATCH_INTEGRATION=1.

// camelCaseProblem is promtool's complaint about node_exporter's meminfo
// names (node_memory_MemTotal_bytes), which the agent keeps on purpose so
// that node dashboards work unchanged.
const camelCaseProblem = "metric names should be written in 'snake_case' not 'camelCase'"

// promtoolProblems runs promtool check metrics on an exposition and
// returns what it reports, one "name problem" per line.
func promtoolProblems(t *testing.T, promtool string, exposition []byte) []string {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			problems = append(problems, l)
		}
	}
	return problems
}

// TestPromtoolCheckMetrics lints the agent's /metrics, on this host and on
// the fixture tree. The only problems allowed are promtool's camelCase
// complaints about node_exporter's own node_memory_* names.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := imtest.RequireBinary(t, "promtool", "prometheus")
	shared := map[string]bool{}
	for _, f := range meminfoFields {
		shared["node_memory_"+f.name] = true
	}
	live := newLiveAgent(t, nil)
	_, liveText := mustScrape(t, "http://"+startServer(t, live).Addr()+"/metrics")
	for _, c := range []struct {
		name string
		text []byte
	}{
		{"live", liveText},
		{"fixture", exposition(t, newFixtureAgent(t, fixtureConfig()).Gatherer())},
	} {
		t.Run(c.name, func(t *testing.T) {
			allowed := 0
			for _, p := range promtoolProblems(t, promtool, c.text) {
				name, problem, _ := strings.Cut(p, " ")
				if problem == camelCaseProblem && shared[name] {
					allowed++
					continue
				}
				t.Errorf("promtool: %s", p)
			}
			t.Logf("promtool: no problems but the camelCase of %d node_exporter meminfo names", allowed)
		})
	}
}

// process is a real server started by a test and stopped at its end.
type process struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...)}
	p.cmd.Stdout = &p.stderr
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
		if t.Failed() || os.Getenv("IMWATCH_TEST_LOG") != "" {
			t.Logf("%s output:\n%s", filepath.Base(bin), p.stderr.String())
		}
	})
	return p
}

// TestPrometheusScrapesAgent has a real Prometheus scrape the agent and
// finds its series through the PromQL HTTP API.
func TestPrometheusScrapesAgent(t *testing.T) {
	bin := imtest.RequireBinary(t, "prometheus", "prometheus")
	a := newLiveAgent(t, nil)
	agentAddr := startServer(t, a).Addr()
	cpus := len(families(t, a.Gatherer())["node_cpu_seconds_total"].GetMetric())

	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: imwatch-agent
    static_configs:
      - targets: ['%s']
`, agentAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", imtest.FreePort(t))
	startProcess(t, bin,
		"--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn")

	query := (&imtest.Prometheus{Addr: promAddr}).Query
	imtest.Eventually(t, 90*time.Second, func() error {
		for _, c := range []struct {
			q    string
			want int
		}{
			{fmt.Sprintf(`up{instance=%q}`, agentAddr), 1},
			{fmt.Sprintf(`node_load1{instance=%q,job="imwatch-agent"}`, agentAddr), 1},
			{fmt.Sprintf(`node_cpu_seconds_total{instance=%q}`, agentAddr), cpus},
			{fmt.Sprintf(`node_memory_MemTotal_bytes{instance=%q} > 0`, agentAddr), 1},
			{fmt.Sprintf(`node_network_transmit_packets_total{instance=%q,device="lo"}`, agentAddr), 1},
		} {
			res, err := query(c.q)
			if err != nil {
				return err
			}
			if len(res) != c.want {
				return fmt.Errorf("%s: %d series, want %d", c.q, len(res), c.want)
			}
			for _, s := range res {
				if s.Metric["instance"] != agentAddr {
					return fmt.Errorf("%s: instance %q, want %q", c.q, s.Metric["instance"], agentAddr)
				}
			}
			if strings.HasPrefix(c.q, "up{") && (len(res[0].Value) != 2 || res[0].Value[1] != "1") {
				return fmt.Errorf("up = %v", res[0].Value)
			}
		}
		return nil
	})
	// A rate over two scrapes works like on node_exporter's series.
	imtest.Eventually(t, 30*time.Second, func() error {
		q := fmt.Sprintf(`sum by (instance) (rate(node_cpu_seconds_total{instance=%q,mode!="idle"}[5s]))`, agentAddr)
		res, err := query(q)
		if err != nil {
			return err
		}
		if len(res) != 1 {
			return fmt.Errorf("%s: %d series", q, len(res))
		}
		return nil
	})
}

// sharedCollectors are the agent's collectors that node_exporter has too,
// under the same names.
var sharedCollectors = []string{"cpu", "loadavg", "meminfo", "stat", "vmstat", "pressure", "diskstats", "filesystem", "netdev", "sockstat", "tcpstat"}

// TestNodeExporterCompat runs node_exporter (Debian's
// prometheus-node-exporter) with the same collectors next to the agent and
// checks that every node_* family the agent serves exists there with the
// same type and label names, and that the per-CPU, per-device and
// per-mount series are the same.
func TestNodeExporterCompat(t *testing.T) {
	bin := imtest.RequireBinary(t, "prometheus-node-exporter", "prometheus-node-exporter")
	addr := fmt.Sprintf("127.0.0.1:%d", imtest.FreePort(t))
	args := []string{"--web.listen-address=" + addr, "--collector.disable-defaults", "--web.disable-exporter-metrics",
		// The agent reports lo; Debian's node_exporter leaves it out by default.
		"--collector.netdev.device-exclude=^$"}
	for _, c := range sharedCollectors {
		args = append(args, "--collector."+c)
	}
	startProcess(t, bin, args...)
	var ne map[string]*dto.MetricFamily
	imtest.Eventually(t, 30*time.Second, func() (err error) {
		ne, _, err = scrape("http://" + addr + "/metrics")
		return err
	})
	a := newLiveAgent(t, func(c *Config) {
		c.DisableDefaults = true
		for _, name := range sharedCollectors {
			c.Enabled[name] = true
		}
	})
	ours, _ := mustScrape(t, "http://"+startServer(t, a).Addr()+"/metrics")

	var names []string
	for name := range ours {
		names = append(names, name)
	}
	sort.Strings(names)
	shared := 0
	for _, name := range names {
		mf := ours[name]
		if !strings.HasPrefix(name, "node_") {
			continue
		}
		shared++
		theirs, ok := ne[name]
		if !ok {
			t.Errorf("%s: node_exporter has no such family", name)
			continue
		}
		if mf.GetType() != theirs.GetType() {
			t.Errorf("%s: type %s, node_exporter's %s", name, mf.GetType(), theirs.GetType())
		}
		if got, want := labelNames(mf), labelNames(theirs); got != want {
			t.Errorf("%s: labels {%s}, node_exporter's {%s}", name, got, want)
		}
	}
	// Same CPUs and modes, devices, mounts, collectors.
	for _, c := range []struct{ family, label string }{
		{"node_cpu_seconds_total", "cpu"},
		{"node_cpu_seconds_total", "mode"},
		{"node_network_receive_bytes_total", "device"},
		{"node_disk_reads_completed_total", "device"},
		{"node_filesystem_size_bytes", "mountpoint"},
		{"node_scrape_collector_success", "collector"},
		{"node_tcp_connection_states", "state"},
	} {
		got, want := labelValues(ours[c.family], c.label), labelValues(ne[c.family], c.label)
		if c.family == "node_tcp_connection_states" {
			// node_exporter reports only the states that have sockets; the
			// agent reports every state.
			if missing := subtract(want, got); len(missing) > 0 {
				t.Errorf("%s: node_exporter has %s=%v, the agent does not", c.family, c.label, missing)
			}
			continue
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: %s values %v, node_exporter's %v", c.family, c.label, got, want)
		}
	}
	var theirsOnly []string
	for name := range ne {
		if _, ok := ours[name]; !ok {
			theirsOnly = append(theirsOnly, name)
		}
	}
	sort.Strings(theirsOnly)
	t.Logf("%d node_* families shared with node_exporter %s; node_exporter also has %d the agent does not: %s",
		shared, neVersion(bin), len(theirsOnly), strings.Join(theirsOnly, " "))
}

func labelNames(mf *dto.MetricFamily) string {
	set := map[string]bool{}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			set[l.GetName()] = true
		}
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func labelValues(mf *dto.MetricFamily, label string) []string {
	set := map[string]bool{}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				set[l.GetValue()] = true
			}
		}
	}
	var out []string
	for v := range set {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func subtract(a, b []string) []string {
	in := map[string]bool{}
	for _, v := range b {
		in[v] = true
	}
	var out []string
	for _, v := range a {
		if !in[v] {
			out = append(out, v)
		}
	}
	return out
}

func neVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	first, _, _ := strings.Cut(string(out), "\n")
	return "(" + first + ")"
}
