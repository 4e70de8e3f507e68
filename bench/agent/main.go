// Command agent measures what a scrape of imwatch agent costs next to
// node_exporter (Debian's prometheus-node-exporter) with the same
// collectors: CPU time of each process per scrape, series per scrape and
// resident memory, measured side by side in one run.
//
// A fourth target is the agent package built alone (bench/agent/agentonly),
// to tell the agent's own memory from what the rest of the imwatch binary
// adds to it.
//
// Each round scrapes every target -scrapes times in a row, sequentially,
// the targets interleaved and their order rotated from round to round; a
// target's CPU per scrape is the growth of utime+stime in /proc/PID/stat
// over its run divided by the scrapes. The report gives the median over
// the rounds.
//
//	make build && go run ./bench/agent -scrapes 500 -rounds 7
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sharedCollectors are the collectors both have, under the same names.
var sharedCollectors = []string{"cpu", "loadavg", "meminfo", "stat", "vmstat", "pressure", "diskstats", "filesystem", "netdev", "sockstat", "tcpstat"}

// userHZ is the unit of utime and stime in /proc/PID/stat.
const userHZ = 100

type target struct {
	Name   string                     `json:"name"`
	Args   []string                   `json:"args"`
	URL    string                     `json:"url"`
	listen func(addr string) []string // the flags that set its listen address
	cmd    *exec.Cmd
	cpuMS  []float64 // CPU ms per scrape, one per round
	wallMS []float64 // wall ms per scrape, one per round

	Series     int     `json:"series_per_scrape"`
	Bytes      int     `json:"bytes_per_scrape"`
	CPUMedian  float64 `json:"cpu_ms_per_scrape_median"`
	CPUMin     float64 `json:"cpu_ms_per_scrape_min"`
	CPUMax     float64 `json:"cpu_ms_per_scrape_max"`
	WallMedian float64 `json:"wall_ms_per_scrape_median"`
	RSSMB      float64 `json:"rss_mb"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
	AnonMB     float64 `json:"rss_anon_mb"`
	FileMB     float64 `json:"rss_file_mb"`
}

func main() {
	imwatch := flag.String("imwatch", "bin/imwatch", "imwatch binary (make build)")
	ne := flag.String("node-exporter", "prometheus-node-exporter", "node_exporter binary")
	scrapes := flag.Int("scrapes", 500, "scrapes of each target per round")
	rounds := flag.Int("rounds", 7, "rounds")
	warmup := flag.Int("warmup", 50, "scrapes of each target before measuring")
	jsonOut := flag.Bool("json", false, "print the results as JSON")
	flag.Parse()
	if err := run(*imwatch, *ne, *scrapes, *rounds, *warmup, *jsonOut); err != nil {
		fmt.Fprintln(os.Stderr, "bench/agent:", err)
		os.Exit(1)
	}
}

func run(imwatch, ne string, scrapes, rounds, warmup int, jsonOut bool) error {
	if _, err := os.Stat(imwatch); err != nil {
		return fmt.Errorf("%w (run make build, or give -imwatch)", err)
	}
	nePath, err := exec.LookPath(ne)
	if err != nil {
		return fmt.Errorf("%w (apt-get install prometheus-node-exporter, or give -node-exporter)", err)
	}
	neArgs := []string{"--collector.disable-defaults", "--web.disable-exporter-metrics", "--collector.netdev.device-exclude=^$"}
	for _, c := range sharedCollectors {
		neArgs = append(neArgs, "--collector."+c)
	}
	tmp, err := os.MkdirTemp("", "bench-agent-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	agentOnly := filepath.Join(tmp, "agentonly")
	if out, err := exec.Command("go", "build", "-o", agentOnly, "github.com/imwatch/imwatch/bench/agent/agentonly").CombinedOutput(); err != nil {
		return fmt.Errorf("build agentonly: %w\n%s", err, out)
	}
	targets := []*target{
		{Name: "node_exporter", Args: append([]string{nePath}, neArgs...), listen: neListen},
		{Name: "imwatch agent, same collectors", Args: []string{imwatch, "agent", "--no-collector.process"}, listen: agentListen},
		{Name: "imwatch agent, defaults (+process)", Args: []string{imwatch, "agent"}, listen: agentListen},
		{Name: "agent package alone, defaults (+process)", Args: []string{agentOnly}, listen: agentOnlyListen},
	}
	defer func() {
		for _, t := range targets {
			stop(t)
		}
	}()
	for _, t := range targets {
		if err := start(t); err != nil {
			return err
		}
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for _, t := range targets {
		if err := scrapeN(client, t, warmup); err != nil {
			return err
		}
	}
	for r := 0; r < rounds; r++ {
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			before, err := cpuTicks(t.cmd.Process.Pid)
			if err != nil {
				return err
			}
			start := time.Now()
			if err := scrapeN(client, t, scrapes); err != nil {
				return err
			}
			wall := time.Since(start)
			after, err := cpuTicks(t.cmd.Process.Pid)
			if err != nil {
				return err
			}
			t.cpuMS = append(t.cpuMS, float64(after-before)*1000/userHZ/float64(scrapes))
			t.wallMS = append(t.wallMS, float64(wall.Microseconds())/1000/float64(scrapes))
		}
	}
	for _, t := range targets {
		t.CPUMedian, t.CPUMin, t.CPUMax = median(t.cpuMS), minOf(t.cpuMS), maxOf(t.cpuMS)
		t.WallMedian = median(t.wallMS)
		m, err := memory(t.cmd.Process.Pid)
		if err != nil {
			return err
		}
		t.RSSMB, t.PeakRSSMB, t.AnonMB, t.FileMB = m["VmRSS"], m["VmHWM"], m["RssAnon"], m["RssFile"]
	}
	if jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"machine": machine(nePath), "scrapes": scrapes, "rounds": rounds, "targets": targets})
	}
	fmt.Printf("machine: %s\n", machine(nePath))
	fmt.Printf("%d rounds of %d sequential scrapes per target (gzip, text format), interleaved\n\n", rounds, scrapes)
	fmt.Println("| target | CPU ms/scrape median (min-max) | vs node_exporter | wall ms/scrape | series | gzip bytes | RSS MB (peak) | anon + file MB |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	base := targets[0].CPUMedian
	for _, t := range targets {
		fmt.Printf("| %s | %.3f (%.3f-%.3f) | %.2fx | %.3f | %d | %d | %.1f (%.1f) | %.1f + %.1f |\n",
			t.Name, t.CPUMedian, t.CPUMin, t.CPUMax, t.CPUMedian/base, t.WallMedian, t.Series, t.Bytes, t.RSSMB, t.PeakRSSMB, t.AnonMB, t.FileMB)
	}
	fmt.Println()
	for _, t := range targets {
		fmt.Printf("%s per-round CPU ms/scrape: %s\n", t.Name, fmtList(t.cpuMS))
	}
	return nil
}

func start(t *target) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append(t.Args[1:], t.listen(addr)...)
	t.Args = append([]string{t.Args[0]}, args...)
	t.URL = "http://" + addr + "/metrics"
	t.cmd = exec.Command(t.Args[0], args...)
	t.cmd.Stderr = io.Discard
	if err := t.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", t.Name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(t.URL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not serving %s after 30s: %v", t.Name, t.URL, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func neListen(addr string) []string        { return []string{"--web.listen-address=" + addr} }
func agentListen(addr string) []string     { return []string{"--listen", addr, "--log-level", "warn"} }
func agentOnlyListen(addr string) []string { return []string{"-listen", addr} }

func stop(t *target) {
	if t.cmd == nil || t.cmd.Process == nil {
		return
	}
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = t.cmd.Process.Kill()
		<-done
	}
}

// prometheusAccept is what Prometheus 2.x asks for when it scrapes.
const prometheusAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// scrapeN scrapes t n times, as Prometheus does: gzip, text format.
func scrapeN(c *http.Client, t *target, n int) error {
	for i := 0; i < n; i++ {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, t.URL, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", prometheusAccept)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", t.Name, resp.Status)
		}
		if i == n-1 {
			t.Bytes = len(body)
			t.Series = countSeries(body, resp.Header.Get("Content-Encoding"))
		}
	}
	return nil
}

func countSeries(body []byte, encoding string) int {
	if encoding == "gzip" {
		if r, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
			if b, err := io.ReadAll(r); err == nil {
				body = b
			}
		}
	}
	n := 0
	s := bufio.NewScanner(bytes.NewReader(body))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if l := s.Text(); l != "" && !strings.HasPrefix(l, "#") {
			n++
		}
	}
	return n
}

// cpuTicks is utime+stime of pid, all its threads, in clock ticks.
func cpuTicks(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(data[i+1:]))
	// After the name: state is field 3, utime 14, stime 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	s, err := strconv.ParseUint(f[12], 10, 64)
	return u + s, err
}

// memory reads VmRSS, VmHWM (peak), RssAnon and RssFile of pid, in MB.
func memory(pid int) (map[string]float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			out[strings.TrimSuffix(f[0], ":")] = kb / 1024
		}
	}
	return out, nil
}

func machine(ne string) string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	kernel := utsString(uts.Release[:])
	out, _ := exec.Command(ne, "--version").CombinedOutput()
	neVersion, _, _ := strings.Cut(string(out), "\n")
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s; %s", runtime.NumCPU(), model, kernel, runtime.Version(), neVersion)
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func fmtList(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.3f", x))
	}
	return strings.Join(s, " ")
}
