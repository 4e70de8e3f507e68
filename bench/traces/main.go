// Command traces benchmarks the center's trace side (docs/benchmarks.md,
// docs/traces.md).
//
//	traces store  [-spans N] [-rounds R]   the trace store against the Pebble peer:
//	                                       append rate, bytes per span, lookup by message id
//	traces ingest [-spans N] [-clients C]  OTLP/HTTP into a running center: spans/s,
//	                                       ingest-to-queryable latency
//
// It is its own Go module so that Pebble, the peer, stays out of imwatch's
// dependencies.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/traces"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: traces store|ingest [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "store":
		err = runStore(os.Args[2:])
	case "ingest":
		err = runIngest(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "traces:", err)
		os.Exit(1)
	}
}

type store interface {
	traces.Store
	Flush() error
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

type storeResult struct {
	design          string
	spans           int
	appendWall      time.Duration // in Append calls
	appendCPU       time.Duration // of the whole process while appending, generation excluded
	flush           time.Duration
	bytes           int64
	lookups         []time.Duration
	byUser          []time.Duration
	found, notFound int
}

// runStore appends the same generated spans to each design in turn and
// measures what the goals name.
func runStore(args []string) error {
	fl := flag.NewFlagSet("store", flag.ExitOnError)
	spans := fl.Int("spans", 10_000_000, "spans to store (eight per message)")
	rounds := fl.Int("rounds", 1, "rounds; each round runs every design once, alternating their order")
	designs := fl.String("designs", "disk,pebble", "designs to compare")
	lookups := fl.Int("lookups", 2000, "lookups by message id after the append")
	dir := fl.String("dir", "", "where to put the stores (default: a temporary directory)")
	_ = fl.Parse(args)
	base := *dir
	if base == "" {
		d, err := os.MkdirTemp("", "trace-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		base = d
	}
	list := bytes.Split([]byte(*designs), []byte(","))
	var results []storeResult
	for r := 0; r < *rounds; r++ {
		order := slices.Clone(list)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, d := range order {
			res, err := benchStore(string(d), filepath.Join(base, fmt.Sprintf("%s-%d-%d", d, *spans, r)), *spans, *lookups)
			if err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
			results = append(results, res)
			printStore(res)
		}
	}
	return nil
}

func printStore(r storeResult) {
	sec := r.appendWall.Seconds()
	fmt.Printf("%-7s spans=%d append: %.0f spans/s (wall in Append), %.2f µs CPU/span (store, flush included); flush %.1fs; disk %.1f MB = %.1f bytes/span; "+
		"lookup by message id (search+trace) p50 %.2fms p95 %.2fms p99 %.2fms (%d found, %d not); by user p50 %.2fms p95 %.2fms\n",
		r.design, r.spans, float64(r.spans)/sec, float64(r.appendCPU.Microseconds())/float64(r.spans), r.flush.Seconds(),
		float64(r.bytes)/1e6, float64(r.bytes)/float64(r.spans),
		ms(pct(r.lookups, 0.5)), ms(pct(r.lookups, 0.95)), ms(pct(r.lookups, 0.99)), r.found, r.notFound,
		ms(pct(r.byUser, 0.5)), ms(pct(r.byUser, 0.95)))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func benchStore(design, dir string, spans, lookups int) (storeResult, error) {
	res := storeResult{design: design}
	var s store
	switch design {
	case "disk":
		d, err := traces.OpenDisk(traces.DiskOptions{Dir: dir, Fsync: true, HeadMaxSpans: 500_000, HeadMaxAge: time.Hour}, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			return res, err
		}
		s = d
	case "pebble":
		p, err := openPebble(dir)
		if err != nil {
			return res, err
		}
		s = p
	default:
		return res, fmt.Errorf("unknown design %q", design)
	}
	defer s.Close()
	// The same spans for every design: the generator's seed is fixed. The
	// generator runs in line; its own cost, measured alone with the same
	// seed, is taken off.
	_, genCPU := generate(spans, lookups, nil)
	c0 := cpuTime()
	msgs := generate2(spans, lookups, func(b []traces.Record) error {
		res.spans += len(b)
		t0 := time.Now()
		err := s.Append(b)
		res.appendWall += time.Since(t0)
		return err
	})
	if msgs.err != nil {
		return res, msgs.err
	}
	t0 := time.Now()
	if err := s.Flush(); err != nil {
		return res, err
	}
	res.flush = time.Since(t0)
	// Everything the store did, in Append and in the background, the
	// final flush and compaction included; the generator's own CPU off.
	res.appendCPU = cpuTime() - c0 - genCPU
	res.bytes = dirSize(dir)
	for _, m := range msgs.sample {
		t0 := time.Now()
		refs, err := s.Search(traces.Query{MsgID: m.msgID, Limit: 20})
		if err != nil {
			return res, err
		}
		ok := false
		for _, r := range refs {
			if r.ID != m.traceID {
				continue
			}
			recs, err := s.Trace(r.ID)
			if err != nil {
				return res, err
			}
			ok = len(recs) == 8
		}
		res.lookups = append(res.lookups, time.Since(t0))
		if ok {
			res.found++
		} else {
			res.notFound++
		}
	}
	for i := 0; i < 200; i++ {
		t0 := time.Now()
		if _, err := s.Search(traces.Query{User: fmt.Sprintf("user%d", i*37), Limit: 20}); err != nil {
			return res, err
		}
		res.byUser = append(res.byUser, time.Since(t0))
	}
	return res, nil
}

// generate makes spans spans in batches of 1024 (an SDK batch, a group
// commit), converted as the receiver converts them, and hands each batch
// to fn (when not nil); it returns the time it took.
func generate(spans, lookups int, fn func([]traces.Record) error) (time.Duration, time.Duration) {
	c0, t0 := cpuTime(), time.Now()
	generate2(spans, lookups, fn)
	return time.Since(t0), cpuTime() - c0
}

type generated struct {
	sample []message // every so many messages, for lookups
	err    error
}

func generate2(spans, lookups int, fn func([]traces.Record) error) generated {
	var out generated
	g := newGen(42, 100_000)
	every := max(1, spans/8/lookups)
	var msgs []message
	for n := 0; n < spans; {
		msgs = msgs[:0]
		req := g.request(128, &msgs)
		for i := range msgs {
			if (g.n-len(msgs)+i)%every == 0 && len(out.sample) < lookups {
				out.sample = append(out.sample, msgs[i])
			}
		}
		c, err := traces.Convert(req, traces.Limits{}, time.Now(), proto.Size(req))
		if err != nil {
			out.err = err
			return out
		}
		n += len(c.Records)
		if fn != nil {
			if err := fn(c.Records); err != nil {
				out.err = err
				return out
			}
		}
	}
	return out
}

// runIngest posts generated OTLP/HTTP requests to a center started in this
// process, from clients in this process, and probes how soon a span just
// acknowledged can be found by its message id.
func runIngest(args []string) error {
	fl := flag.NewFlagSet("ingest", flag.ExitOnError)
	spans := fl.Int("spans", 2_000_000, "spans to send (generated before the clock starts)")
	clients := fl.Int("clients", 8, "concurrent senders")
	batch := fl.Int("batch", 512, "spans per request (the SDK's default batch)")
	fsync := fl.Bool("fsync", true, "traces.wal_fsync")
	profile := fl.String("cpuprofile", "", "write a CPU profile of the run here")
	_ = fl.Parse(args)
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	dir, err := os.MkdirTemp("", "trace-ingest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	cfg.Storage.Path = filepath.Join(dir, "tsdb")
	cfg.Listen = "127.0.0.1:0"
	cfg.Traces.WALFsync = *fsync
	c, err := center.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if err := c.Start(context.Background()); err != nil {
		return err
	}
	defer c.Stop(context.Background())

	g := newGen(7, 100_000)
	var bodies [][]byte
	for n := 0; n < *spans; n += *batch {
		b, _ := proto.Marshal(g.request(*batch/8, nil))
		bodies = append(bodies, b)
	}
	fmt.Printf("ingest: %d requests of %d spans (%.0f bytes/request), %d clients, wal_fsync=%v\n", len(bodies), *batch, float64(totalLen(bodies))/float64(len(bodies)), *clients, *fsync)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *clients + 2}}
	url := c.URL() + "/v1/traces"
	var next atomic.Int64
	var accepted, refused atomic.Int64
	stop := make(chan struct{})
	var probes []time.Duration
	var probeMiss int
	probeDone := make(chan struct{})
	go func() { // ingest to queryable, every 100ms
		defer close(probeDone)
		pg := newGen(99, 10)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var m []message
			req := pg.request(1, &m)
			b, _ := proto.Marshal(req)
			t0 := time.Now()
			code := post(client, url, b)
			if code != 200 {
				continue
			}
			found := false
			for time.Since(t0) < 10*time.Second {
				if lookup(client, c.URL(), m[0].msgID) {
					found = true
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			if found {
				probes = append(probes, time.Since(t0))
			} else {
				probeMiss++
			}
		}
	}()
	c0, t0 := cpuTime(), time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bodies) {
					return
				}
				for {
					code := post(client, url, bodies[i])
					if code == 200 {
						accepted.Add(int64(*batch))
						break
					}
					refused.Add(int64(*batch))
					time.Sleep(50 * time.Millisecond) // 503: the sender retries
				}
			}
		}()
	}
	wg.Wait()
	wall, cpu := time.Since(t0), cpuTime()-c0
	close(stop)
	<-probeDone
	fmt.Printf("ingest: %.0f spans/s over %.1fs (%d spans stored, %d refused with 503 and retried), %.2f µs CPU/span (center and clients), "+
		"ingest to queryable p50 %.1fms p99 %.1fms max %.1fms (%d probes, %d not found within 10s)\n",
		float64(accepted.Load())/wall.Seconds(), wall.Seconds(), accepted.Load(), refused.Load(), float64(cpu.Microseconds())/float64(accepted.Load()),
		ms(pct(probes, 0.5)), ms(pct(probes, 0.99)), ms(pct(probes, 1)), len(probes), probeMiss)
	return nil
}

func totalLen(bs [][]byte) int {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	return n
}

func post(c *http.Client, url string, body []byte) int {
	resp, err := c.Post(url, "application/x-protobuf", bytes.NewReader(body))
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func lookup(c *http.Client, base, msgID string) bool {
	resp, err := c.Get(base + "/api/traces?msg_id=" + msgID)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var l struct {
		Traces []json.RawMessage `json:"traces"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&l)
	return len(l.Traces) > 0
}
