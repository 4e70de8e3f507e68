// Command center measures the remote-write ingest of imwatch center next to
// Prometheus 2.42's receiver (Debian's prometheus, --web.enable-remote-write-
// receiver), on the same machine, in the same run, with the same data, and
// then the latency of PromQL queries over that data on both.
//
// The data looks like node_exporter's: -series series, 171 per host,
// one sample per series every 15 s for -steps steps, sent the way
// Prometheus's queue manager sends it: the series split into -shards shards
// by hash, each shard a sequence of requests of -batch samples (one
// TimeSeries per sample) in time order, the shards sent concurrently. All
// requests are built and snappy-compressed before the first run, and every
// target gets the very same bytes.
//
// Each round starts every target fresh (new data directory), sends all
// requests, and measures wall time, the CPU time of the server
// (utime+stime in /proc/PID/stat), its peak resident memory, and the CPU the
// rest of the machine used meanwhile (noise). Then it runs each query
// -queries times and keeps the latencies. Targets are interleaved and
// their order rotated between rounds; the report gives medians.
//
//	make build && go run ./bench/center -rounds 3
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"
)

// current is the server being measured, for the signal handler.
var current struct {
	sync.Mutex
	cmd *exec.Cmd
}

// userHZ is the unit of utime and stime in /proc/PID/stat.
const userHZ = 100

type target struct {
	name  string
	start func(dir string, port int) *exec.Cmd
	url   string
	cmd   *exec.Cmd

	ingest []float64 // samples/s, per round
	cpu    []float64 // samples per CPU second of the server, per round
	rss    []float64 // peak RSS MB, per round
	noise  []float64 // % of a core used by other processes, per round
	lat    map[string][]float64
	errs   int
}

type options struct {
	series, steps, batch, shards, queries, rounds int
	imwatch, prometheus                           string
	fsync                                         bool
}

func main() {
	var o options
	flag.IntVar(&o.series, "series", 20000, "series")
	flag.IntVar(&o.steps, "steps", 200, "samples per series (one every 15s)")
	flag.IntVar(&o.batch, "batch", 2000, "samples per request (Prometheus's max_samples_per_send)")
	flag.IntVar(&o.shards, "shards", 4, "requests in flight at once (Prometheus's shards)")
	flag.IntVar(&o.queries, "queries", 20, "runs of each query per round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds")
	flag.StringVar(&o.imwatch, "imwatch", "bin/imwatch", "imwatch binary (make build)")
	flag.StringVar(&o.prometheus, "prometheus", "prometheus", "prometheus binary (Debian package prometheus)")
	flag.BoolVar(&o.fsync, "fsync", true, "also measure the center with storage.wal_fsync on")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/center:", err)
		os.Exit(1)
	}
}

// queries run on both targets at the end of the data.
var queries = []struct{ name, kind, q string }{
	{"instant: sum(rate) of a counter, 1 family", "instant", `sum(rate(node_cpu_seconds_total[5m]))`},
	{"instant: rate by instance", "instant", `sum by (instance) (rate(node_network_receive_bytes_total[5m]))`},
	{"instant: topk over a gauge", "instant", `topk(5, node_memory_MemAvailable_bytes)`},
	{"instant: histogram_quantile", "instant", `histogram_quantile(0.99, sum by (le) (rate(imwatch_im_e2e_duration_seconds_bucket[5m])))`},
	{"instant: count all series", "instant", `count({job="node"})`},
	{"range 1h/15s: rate by instance", "range", `sum by (instance) (rate(node_network_receive_bytes_total[5m]))`},
	{"range 1h/15s: cpu busy by instance", "range", `1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))`},
	{"range 1h/15s: histogram_quantile", "range", `histogram_quantile(0.99, sum by (le) (rate(imwatch_im_e2e_duration_seconds_bucket[5m])))`},
}

func run(o options) error {
	if _, err := os.Stat(o.imwatch); err != nil {
		return fmt.Errorf("%w (run make build first)", err)
	}
	prom, err := exec.LookPath(o.prometheus)
	if err != nil {
		return fmt.Errorf("prometheus: %w", err)
	}
	version, _ := exec.Command(prom, "--version").Output()
	end := time.Now().Truncate(15 * time.Second)
	start := end.Add(-time.Duration(o.steps) * 15 * time.Second)
	fmt.Fprintf(os.Stderr, "building %d series x %d steps = %d samples...\n", o.series, o.steps, o.series*o.steps)
	shards, size, err := build(o, start)
	if err != nil {
		return err
	}
	total := o.series * o.steps
	fmt.Fprintf(os.Stderr, "%d requests, %.1f MB compressed\n", countReqs(shards), float64(size)/1e6)

	tmp, err := os.MkdirTemp("", "bench-center-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// On Ctrl-C, stop the server being measured and clean up.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		current.Lock()
		if current.cmd != nil && current.cmd.Process != nil {
			_ = current.cmd.Process.Kill()
		}
		current.Unlock()
		os.RemoveAll(tmp)
		os.Exit(130)
	}()
	targets := []*target{
		{name: "prometheus 2.42", start: func(dir string, port int) *exec.Cmd {
			cfg := filepath.Join(dir, "prometheus.yml")
			_ = os.WriteFile(cfg, []byte("global: {scrape_interval: 1h}\n"), 0o600)
			return exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
				"--web.listen-address=127.0.0.1:"+strconv.Itoa(port), "--web.enable-remote-write-receiver")
		}},
		{name: "imwatch center", start: centerStarter(o.imwatch, false)},
	}
	if o.fsync {
		targets = append(targets, &target{name: "imwatch center, wal_fsync", start: centerStarter(o.imwatch, true)})
	}
	for _, t := range targets {
		t.lat = map[string][]float64{}
	}
	for round := 0; round < o.rounds; round++ {
		for i := range targets {
			t := targets[(i+round)%len(targets)]
			dir := filepath.Join(tmp, fmt.Sprintf("r%d-%d", round, i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			// A run during which other processes took more than a quarter
			// of a core is noisy: it is run again, up to twice.
			for attempt := 0; ; attempt++ {
				waitQuiet(4 * time.Minute)
				snap := t.snapshot()
				if err := measure(t, filepath.Join(dir, strconv.Itoa(attempt)), shards, total, o, start, end); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				fmt.Fprintf(os.Stderr, "round %d %-28s %10.0f samples/s  %8.0f samples/CPU-s  peak RSS %4.0f MB  noise %3.0f%%\n",
					round+1, t.name, last(t.ingest), last(t.cpu), last(t.rss), last(t.noise))
				if last(t.noise) <= noiseLimit || attempt == 2 {
					break
				}
				t.restore(snap)
				fmt.Fprintln(os.Stderr, "  noisy, again")
			}
		}
	}
	report(o, targets, total, strings.TrimSpace(firstLine(string(version))))
	return nil
}

// waitQuiet waits (up to limit) until the machine has been idle for 3 s.
func waitQuiet(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b0 := systemBusy()
		time.Sleep(3 * time.Second)
		if (systemBusy()-b0)/3*100 < noiseLimit {
			return
		}
	}
}

// noiseLimit is the % of a core other processes may use during a run.
const noiseLimit = 25

type snapshot struct {
	ingest, cpu, rss, noise int
	lat                     map[string]int
}

func (t *target) snapshot() snapshot {
	s := snapshot{len(t.ingest), len(t.cpu), len(t.rss), len(t.noise), map[string]int{}}
	for k, v := range t.lat {
		s.lat[k] = len(v)
	}
	return s
}

func (t *target) restore(s snapshot) {
	t.ingest, t.cpu, t.rss, t.noise = t.ingest[:s.ingest], t.cpu[:s.cpu], t.rss[:s.rss], t.noise[:s.noise]
	for k := range t.lat {
		t.lat[k] = t.lat[k][:s.lat[k]]
	}
}

func centerStarter(bin string, fsync bool) func(dir string, port int) *exec.Cmd {
	return func(dir string, port int) *exec.Cmd {
		cfg := filepath.Join(dir, "center.yml")
		_ = os.WriteFile(cfg, []byte(fmt.Sprintf("storage: {path: data, wal_fsync: %v}\n", fsync)), 0o600)
		return exec.Command(bin, "center", "--config", cfg, "--listen", "127.0.0.1:"+strconv.Itoa(port), "--log-level", "warn")
	}
}

// build makes the requests of every shard.
func build(o options, start time.Time) ([][][]byte, int, error) {
	type series struct {
		labels []prompb.Label
		kind   int // 0 counter, 1 gauge
	}
	all := make([]series, 0, o.series)
	// Per host: 16 CPUs x 8 modes, 4 NICs, memory, a latency histogram of
	// 2 kinds x 15 buckets, 8 disks: 171 series, node_exporter-like.
	modes := []string{"idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice"}
	les := []string{"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"}
	var perHost [][]prompb.Label
	for cpu := 0; cpu < 16; cpu++ {
		for _, m := range modes {
			perHost = append(perHost, []prompb.Label{{Name: "__name__", Value: "node_cpu_seconds_total"}, {Name: "cpu", Value: strconv.Itoa(cpu)}, {Name: "mode", Value: m}})
		}
	}
	for d := 0; d < 4; d++ {
		perHost = append(perHost, []prompb.Label{{Name: "__name__", Value: "node_network_receive_bytes_total"}, {Name: "device", Value: "eth" + strconv.Itoa(d)}})
	}
	perHost = append(perHost, []prompb.Label{{Name: "__name__", Value: "node_memory_MemAvailable_bytes"}})
	for _, k := range []string{"direct", "group"} {
		for _, le := range les {
			perHost = append(perHost, []prompb.Label{{Name: "__name__", Value: "imwatch_im_e2e_duration_seconds_bucket"}, {Name: "kind", Value: k}, {Name: "le", Value: le}})
		}
	}
	for d := 0; d < 8; d++ {
		perHost = append(perHost, []prompb.Label{{Name: "__name__", Value: "node_disk_read_bytes_total"}, {Name: "device", Value: "sd" + string(rune('a'+d))}})
	}
	for host := 0; len(all) < o.series; host++ {
		for _, base := range perHost {
			if len(all) == o.series {
				break
			}
			ls := append(append([]prompb.Label(nil), base...),
				prompb.Label{Name: "instance", Value: fmt.Sprintf("host-%03d.example.org:9100", host)}, prompb.Label{Name: "job", Value: "node"})
			sort.Slice(ls, func(a, b int) bool { return ls[a].Name < ls[b].Name })
			kind := 0
			if base[0].Value == "node_memory_MemAvailable_bytes" {
				kind = 1
			}
			all = append(all, series{labels: ls, kind: kind})
		}
	}
	// Like Prometheus, a series always goes to the same shard.
	byShard := make([][]int, o.shards)
	seen := map[string]bool{}
	for i, s := range all {
		h := fnv.New64a()
		for _, l := range s.labels {
			h.Write([]byte(l.Name + "\xff" + l.Value + "\xff"))
		}
		key := fmt.Sprint(s.labels)
		if seen[key] {
			return nil, 0, fmt.Errorf("duplicate series %s", key)
		}
		seen[key] = true
		byShard[h.Sum64()%uint64(o.shards)] = append(byShard[h.Sum64()%uint64(o.shards)], i)
	}
	out := make([][][]byte, o.shards)
	size := 0
	for sh, idx := range byShard {
		var req prompb.WriteRequest
		flush := func() {
			if len(req.Timeseries) == 0 {
				return
			}
			b, _ := req.Marshal()
			c := snappy.Encode(nil, b)
			size += len(c)
			out[sh] = append(out[sh], c)
			req.Timeseries = req.Timeseries[:0]
		}
		for step := 0; step < o.steps; step++ {
			ts := start.Add(time.Duration(step) * 15 * time.Second).UnixMilli()
			for _, i := range idx {
				v := float64(step) * float64(i%97+1) * 1.5 // counters grow
				if all[i].kind == 1 {
					v = float64((i*7919+step*31)%1000) * 1e6
				}
				req.Timeseries = append(req.Timeseries, prompb.TimeSeries{Labels: all[i].labels, Samples: []prompb.Sample{{Value: v, Timestamp: ts}}})
				if len(req.Timeseries) == o.batch {
					flush()
				}
			}
		}
		flush()
	}
	return out, size, nil
}

func countReqs(shards [][][]byte) int {
	n := 0
	for _, s := range shards {
		n += len(s)
	}
	return n
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func measure(t *target, dir string, shards [][][]byte, total int, o options, start, end time.Time) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	t.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	t.cmd = t.start(dir, port)
	var logBuf bytes.Buffer
	t.cmd.Stdout, t.cmd.Stderr = &logBuf, &logBuf
	current.Lock()
	err = t.cmd.Start()
	current.cmd = t.cmd
	current.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		_ = t.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = t.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = t.cmd.Process.Kill()
			<-done
		}
	}()
	if err := waitReady(t.url, 60*time.Second); err != nil {
		return fmt.Errorf("%w: %s", err, logBuf.String())
	}
	pid := t.cmd.Process.Pid
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(shards)}, Timeout: time.Minute}

	cpu0 := procCPU(pid)
	sys0 := systemBusy()
	self0 := procCPU(os.Getpid())
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(shards))
	for _, reqs := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, body := range reqs {
				if err := post(client, t.url+"/api/v1/write", body); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	close(errs)
	for err := range errs {
		return fmt.Errorf("write: %w", err)
	}
	cpu := procCPU(pid) - cpu0
	busy := systemBusy() - sys0
	self := procCPU(os.Getpid()) - self0
	t.ingest = append(t.ingest, float64(total)/wall.Seconds())
	t.cpu = append(t.cpu, float64(total)/cpu)
	t.rss = append(t.rss, peakRSSMB(pid))
	t.noise = append(t.noise, max(0, busy-cpu-self)/wall.Seconds()*100)

	// Everything sent is stored: count it.
	at := end.Add(-15 * time.Second)
	if err := checkCount(client, t.url, at, total); err != nil {
		return err
	}

	// Queries at the end of the data, the range ones over its last hour.
	for _, q := range queries {
		params := url.Values{"query": {q.q}}
		path := "/api/v1/query"
		if q.kind == "range" {
			path = "/api/v1/query_range"
			params.Set("start", strconv.FormatInt(at.Add(-time.Hour).Unix(), 10))
			params.Set("end", strconv.FormatInt(at.Unix(), 10))
			params.Set("step", "15")
		} else {
			params.Set("time", strconv.FormatInt(at.Unix(), 10))
		}
		for i := 0; i < o.queries; i++ {
			t1 := time.Now()
			n, err := get(client, t.url+path+"?"+params.Encode())
			if err != nil {
				return fmt.Errorf("query %s: %w", q.q, err)
			}
			if n < 50 {
				return fmt.Errorf("query %s: empty answer", q.q)
			}
			t.lat[q.name] = append(t.lat[q.name], float64(time.Since(t1).Microseconds())/1000)
		}
	}
	return nil
}

func checkCount(c *http.Client, base string, at time.Time, want int) error {
	params := url.Values{"query": {`sum(count_over_time({job="node"}[1d]))`}, "time": {strconv.FormatInt(at.Unix(), 10)}}
	resp, err := c.Get(base + "/api/v1/query?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), fmt.Sprintf(`"%d"]`, want)) {
		return fmt.Errorf("stored samples: %s, want %d", b, want)
	}
	return nil
}

func post(c *http.Client, u string, body []byte) error {
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, msg)
	}
	return nil
}

func get(c *http.Client, u string) (int, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return len(b), nil
}

func waitReady(u string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for ctx.Err() == nil {
		resp, err := http.Get(u + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("not ready in time")
}

// procCPU is the CPU seconds (user+system) pid has used.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / userHZ
}

// systemBusy is the CPU seconds all processes have used (non-idle time).
func systemBusy() float64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fields := strings.Fields(sc.Text())[1:]
	var busy float64
	for i, v := range fields {
		n, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is in user already
			break
		}
		busy += n
	}
	return busy / userHZ
}

func peakRSSMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile(v []float64, p float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func last(v []float64) float64 { return v[len(v)-1] }

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func report(o options, targets []*target, total int, promVersion string) {
	cpuModel := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpuModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	fmt.Printf("Machine: %d cores (%s), %s; %s. %d series x %d samples = %d samples, %d per request, %d shards; %d rounds, medians.\n\n",
		runtime.NumCPU(), cpuModel, runtime.GOOS, promVersion, o.series, o.steps, total, o.batch, o.shards, o.rounds)
	base := median(targets[0].ingest)
	fmt.Println("| target | ingest samples/s | vs Prometheus | samples per CPU-second | peak RSS MB | noise (others, % of a core) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, t := range targets {
		fmt.Printf("| %s | %.0f | %.2fx | %.0f | %.0f | %.0f |\n", t.name, median(t.ingest), median(t.ingest)/base, median(t.cpu), median(t.rss), median(t.noise))
	}
	fmt.Printf("\nQuery latency, ms (p50 / p95 over %d runs per round x %d rounds):\n\n", o.queries, o.rounds)
	head := "| query |"
	sep := "|---|"
	for _, t := range targets {
		head += " " + t.name + " |"
		sep += "---:|"
	}
	fmt.Println(head)
	fmt.Println(sep)
	for _, q := range queries {
		line := "| `" + q.q + "` (" + q.kind + ") |"
		for _, t := range targets {
			line += fmt.Sprintf(" %.1f / %.1f |", median(t.lat[q.name]), percentile(t.lat[q.name], 0.95))
		}
		fmt.Println(line)
	}
}
