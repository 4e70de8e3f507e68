// Command ui measures how long the web UI's overview takes to render with a
// day of data from `imwatch up` (issue 7: at most 1 s).
//
// A day of data: it runs `imwatch up` once with chat traffic (`imwatch im
// bench`), reads every series the center holds and its value at two times
// 20 s apart, stops it, and writes 24 hours of history for every one of
// those series into the data directory's tsdb as blocks (Prometheus's tsdb
// block writer), one sample every 5 s (the scrape interval of `imwatch up`):
// counters grow at the rate they had, modulated by a daily wave, gauges keep
// their value with a little noise. Then it starts `imwatch up` again on that
// data and loads the overview in headless Chromium (Debian's chromium):
// the time to rendered charts is the performance mark the page sets once
// every chart and table has drawn what it fetched (imwatch:ready:overview,
// milliseconds since the navigation started: module loads, API queries and
// drawing included). Each load is a fresh navigation; loads of the last 24
// hours alternate with loads of the last hour (the peer, on the same data
// in the same run); the report gives medians and their ratio.
//
//	go run ./bench/ui -loads 9
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"

	"github.com/imwatch/imwatch/internal/center/ui/uitest"
)

const (
	scrape = 5 * time.Second
	day    = 24 * time.Hour
	block  = 2 * time.Hour
)

func main() {
	loads := flag.Int("loads", 9, "loads of each range")
	hours := flag.Float64("hours", 24, "hours of history to write")
	bin := flag.String("imwatch", "", "imwatch binary (default: go build one)")
	chromium := flag.String("chromium", "chromium", "Chromium binary")
	keep := flag.Bool("keep", false, "keep the data directory")
	flag.Parse()
	if err := run(*loads, time.Duration(*hours*float64(time.Hour)), *bin, *chromium, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench/ui:", err)
		os.Exit(1)
	}
}

func run(loads int, history time.Duration, bin, chromium string, keep bool) error {
	tmp, err := os.MkdirTemp("", "imwatch-bench-ui-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(tmp)
	} else {
		fmt.Println("data in", tmp)
	}
	if bin == "" {
		bin = filepath.Join(tmp, "imwatch")
		b := exec.Command("go", "build", "-o", bin, "./cmd/imwatch")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("build imwatch: %w", err)
		}
	}
	data := filepath.Join(tmp, "data")

	// 1. A first run with traffic, to learn the series and their rates.
	start := time.Now()
	up, err := startUp(bin, data)
	if err != nil {
		return err
	}
	traffic := exec.Command(bin, "im", "bench", "--data", data, "--gateway", up.gateways, "--users", "20", "--rate", "50", "--duration", "45s")
	if err := traffic.Start(); err != nil {
		up.stop()
		return err
	}
	time.Sleep(20 * time.Second) // the traffic runs and gets scraped
	t1 := time.Now()
	time.Sleep(20 * time.Second)
	t2 := time.Now()
	v1, err1 := snapshot(up.center, t1)
	v2, err2 := snapshot(up.center, t2)
	_ = traffic.Wait()
	if err := up.stop(); err != nil {
		return err
	}
	if err := errors.Join(err1, err2); err != nil {
		return err
	}

	// 2. A day of history before the first run.
	end := start.Add(-scrape).Truncate(scrape)
	n, samples, err := writeHistory(filepath.Join(data, "tsdb"), v1, v2, t2.Sub(t1), end.Add(-history), end)
	if err != nil {
		return err
	}
	size := dirSize(filepath.Join(data, "tsdb"))
	fmt.Printf("history: %d series, %d samples, %s to %s, tsdb %.1f MB\n", n, samples, end.Add(-history).Format(time.RFC3339), end.Format(time.RFC3339), float64(size)/1e6)

	// 3. imwatch up on that data; the overview in Chromium.
	up, err = startUp(bin, data)
	if err != nil {
		return err
	}
	defer up.stop()
	if err := checkHistory(up.center, end.Add(-history/2)); err != nil {
		return err
	}
	res, err := measure(chromium, up.center, loads)
	if err != nil {
		return err
	}
	d, h := median(res["24h"]), median(res["1h"])
	fmt.Printf("overview, last 24h: median %.0f ms (loads %v)\n", d, res["24h"])
	fmt.Printf("overview, last 1h:  median %.0f ms (loads %v)\n", h, res["1h"])
	fmt.Printf("ratio 24h/1h: %.2f\n", d/h)
	return nil
}

type upProc struct {
	cmd      *exec.Cmd
	center   string
	gateways string
	done     chan error
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePair is a port whose next port is free too (the second gateway).
func freePair() int {
	for {
		p := freePort()
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l.Close()
			return p
		}
	}
}

func startUp(bin, data string) (*upProc, error) {
	gw := freePair()
	center := "127.0.0.1:" + strconv.Itoa(freePort())
	cmd := exec.Command(bin, "up", "--data", data, "--listen", center,
		"--gateway-listen", "127.0.0.1:"+strconv.Itoa(gw), "--nats-listen", "127.0.0.1:"+strconv.Itoa(freePort()),
		"--logic-metrics-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &upProc{cmd: cmd, center: "http://" + center, done: make(chan error, 1),
		gateways: fmt.Sprintf("ws://127.0.0.1:%d/ws,ws://127.0.0.1:%d/ws", gw, gw+1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Stop with Ctrl-C.") {
				close(ready)
			}
		}
		p.done <- cmd.Wait()
	}()
	select {
	case <-ready:
		return p, nil
	case err := <-p.done:
		return nil, fmt.Errorf("imwatch up exited: %v", err)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return nil, errors.New("imwatch up did not start within 60s")
	}
}

func (p *upProc) stop() error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		return err
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New("imwatch up did not stop within 60s")
	}
}

type series struct {
	lset labels.Labels
	v    float64
}

// snapshot is every series the center has at t, with its value.
func snapshot(center string, t time.Time) (map[string]series, error) {
	u := center + "/api/v1/query?" + url.Values{"query": {`{__name__=~".+"}`}, "time": {strconv.FormatInt(t.Unix(), 10)}}.Encode()
	resp, err := http.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	out := map[string]series{}
	for _, s := range r.Data.Result {
		name := s.Metric["__name__"]
		if strings.HasPrefix(name, "ALERTS") { // no made-up alert history
			continue
		}
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		ls := labels.FromMap(s.Metric)
		out[ls.String()] = series{ls, v}
	}
	if len(out) == 0 {
		return nil, errors.New("the center holds no series")
	}
	return out, nil
}

func isCounter(name string) bool {
	for _, s := range []string{"_total", "_count", "_sum", "_bucket"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return strings.HasPrefix(name, "node_vmstat_")
}

// writeHistory writes a sample every scrape interval in [from, to) for each
// series of v2, as 2-hour blocks.
func writeHistory(dir string, v1, v2 map[string]series, dt time.Duration, from, to time.Time) (int, int64, error) {
	type gen struct {
		lset    labels.Labels
		counter bool
		rate    float64 // per second
		value   float64
	}
	var gens []gen
	for k, s := range v2 {
		g := gen{lset: s.lset, counter: isCounter(s.lset.Get("__name__")), value: s.v}
		if g.counter {
			if p, ok := v1[k]; ok && s.v >= p.v {
				g.rate = (s.v - p.v) / dt.Seconds()
			}
		}
		gens = append(gens, g)
	}
	sort.Slice(gens, func(i, j int) bool { return labels.Compare(gens[i].lset, gens[j].lset) < 0 })
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rng := rand.New(rand.NewPCG(1, 2))
	f0 := float64(from.UnixMilli())
	// counter(t): the integral of rate × (1 + 0.5 sin(2π t/day)): monotonic,
	// busiest mid-day.
	counter := func(rate float64, t int64) float64 {
		x := (float64(t) - f0) / 1000
		p := day.Seconds()
		return rate * (x + 0.5*p/(2*math.Pi)*(1-math.Cos(2*math.Pi*x/p)))
	}
	var samples int64
	for bs := from.Truncate(block); bs.Before(to); bs = bs.Add(block) {
		w, err := tsdb.NewBlockWriter(log, dir, block.Milliseconds())
		if err != nil {
			return 0, 0, err
		}
		ctx := context.Background()
		app := w.Appender(ctx)
		refs := make([]storage.SeriesRef, len(gens))
		n := 0
		for t := bs; t.Before(bs.Add(block)) && t.Before(to); t = t.Add(scrape) {
			if t.Before(from) {
				continue
			}
			ms := t.UnixMilli()
			for i, g := range gens {
				v := g.value * (1 + 0.05*(rng.Float64()-0.5))
				if g.counter {
					v = counter(g.rate, ms)
				}
				ref, err := app.Append(refs[i], g.lset, ms, v)
				if err != nil {
					return 0, 0, fmt.Errorf("append %s: %w", g.lset, err)
				}
				refs[i] = ref
				n++
			}
			if n > 200000 {
				if err := app.Commit(); err != nil {
					return 0, 0, err
				}
				samples += int64(n)
				n = 0
				app = w.Appender(ctx)
			}
		}
		if err := app.Commit(); err != nil {
			return 0, 0, err
		}
		samples += int64(n)
		if _, err := w.Flush(ctx); err != nil {
			return 0, 0, err
		}
		if err := w.Close(); err != nil {
			return 0, 0, err
		}
	}
	return len(gens), samples, nil
}

// checkHistory makes sure the restarted center reads the history.
func checkHistory(center string, at time.Time) error {
	u := center + "/api/v1/query?" + url.Values{"query": {`count(up)`}, "time": {strconv.FormatInt(at.Unix(), 10)}}.Encode()
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []any `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return err
	}
	if len(r.Data.Result) == 0 {
		return fmt.Errorf("the center has no data at %s: the history was not loaded", at)
	}
	return nil
}

// measure loads the overview loads times per range, alternating, and
// returns the milliseconds to the page's ready mark.
func measure(chromium, center string, loads int) (map[string][]float64, error) {
	dir, err := os.MkdirTemp("", "imwatch-bench-chromium-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts := append([]chromedp.ExecAllocatorOption{chromedp.ExecPath(chromium), chromedp.UserDataDir(dir)}, uitest.Flags...)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		return nil, fmt.Errorf("start chromium: %w", err)
	}
	out := map[string][]float64{}
	ranges := []string{"24h", "1h"}
	for i := 0; i < loads+1; i++ { // the first round warms up, and is not counted
		for _, r := range ranges {
			lctx, lcancel := context.WithTimeout(ctx, 60*time.Second)
			err := chromedp.Do(lctx, chromedp.Navigate("about:blank"), chromedp.Navigate(center+"/#/overview?range="+r),
				uitest.WaitReady("overview"))
			if err != nil {
				lcancel()
				return nil, fmt.Errorf("load overview %s: %w", r, err)
			}
			v, err := chromedp.Run(lctx, chromedp.Evaluate[[]float64](`[performance.getEntriesByName('imwatch:ready:overview')[0].startTime,
				document.querySelectorAll('.chart[data-state=data]').length]`))
			lcancel()
			if err != nil {
				return nil, err
			}
			if v[1] < 3 {
				return nil, fmt.Errorf("overview %s: only %.0f charts hold data", r, v[1])
			}
			if i > 0 {
				out[r] = append(out[r], math.Round(v[0]))
			}
			if i == loads && r == "24h" {
				// Where the last load spent its time: the slowest requests.
				slow, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`performance.getEntriesByType('resource')
					.sort((a, b) => b.duration - a.duration).slice(0, 6)
					.map((e) => Math.round(e.startTime) + '+' + Math.round(e.duration) + ' ms ' + decodeURIComponent(e.name.replace(/^[^?]*\?/, '')).slice(0, 110))`))
				if err == nil {
					fmt.Println("slowest requests of the last 24h load (start+duration):")
					for _, x := range slow {
						fmt.Println("  ", x)
					}
				}
			}
		}
	}
	return out, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return math.NaN()
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
