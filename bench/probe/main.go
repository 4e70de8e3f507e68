// Command probe measures how many probe sessions one prober holds: N probe
// accounts in a ring, each sending one message per interval through the
// reference IM, and what the prober's own CPU costs per round, and how far
// its timing is from the same rounds timed outside it.
//
// The IM cluster (embedded NATS, a logic node, a gateway) runs in a child
// process (this binary with -role cluster), so the prober's CPU is this
// process's. A few accounts (-timed) reach the gateway through a WebSocket
// proxy in the child that times, on its own clock, the send frame going in
// and the deliver frame coming out: the same round timed from outside the
// prober.
//
//	go run ./bench/probe -accounts 2000 -duration 30s
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/internal/probe"
)

var cpuProfile string

var secret = []byte("bench-probe-secret-0123456789")

func main() {
	role := flag.String("role", "prober", "prober (default) or cluster (the child process)")
	accounts := flag.Int("accounts", 1000, "probe accounts (links), each sending one message per interval")
	timed := flag.Int("timed", 20, "of them, accounts reaching the gateway through the timing proxy")
	interval := flag.Duration("interval", time.Second, "round interval per account")
	timeout := flag.Duration("timeout", 3*time.Second, "round timeout")
	warmup := flag.Duration("warmup", 15*time.Second, "time to connect and settle before measuring")
	duration := flag.Duration("duration", 30*time.Second, "measured time")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the prober during the measured time")
	flag.Parse()
	cpuProfile = *profile
	if *role == "cluster" {
		runCluster()
		return
	}
	if err := run(*accounts, *timed, *interval, *timeout, *warmup, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "bench/probe:", err)
		os.Exit(1)
	}
}

// runCluster is the child: the IM and the timing proxy, until stdin closes.
func runCluster() {
	dir, _ := os.MkdirTemp("", "bench-probe-")
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)
	c, err := cluster.Start(context.Background(), cluster.Options{DataDir: dir, Secret: secret, Log: quiet,
		GatewayListen: []string{"127.0.0.1:0"}, LogicNodes: 1})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	px := &proxy{upstream: c.URLs()[0], sent: map[string]time.Time{}, e2e: map[string]time.Duration{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", px.serve)
	mux.HandleFunc("/timings", func(w http.ResponseWriter, _ *http.Request) {
		px.mu.Lock()
		defer px.mu.Unlock()
		json.NewEncoder(w).Encode(px.e2e)
	})
	srv := &http.Server{Addr: "127.0.0.1:0", Handler: mux}
	ln, err := netListen()
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	go srv.Serve(ln)
	fmt.Printf("READY %s ws://%s/ws http://%s/timings\n", c.URLs()[0], ln.Addr(), ln.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n') // the parent closes stdin to stop us
	srv.Close()
	c.Stop(10 * time.Second)
}

// proxy relays WebSocket frames and times probe messages: send frame in,
// first deliver frame out.
type proxy struct {
	upstream string
	mu       sync.Mutex
	sent     map[string]time.Time
	e2e      map[string]time.Duration
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request) {
	down, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, _, err := websocket.Dial(ctx, p.upstream, nil)
	if err != nil {
		down.CloseNow()
		return
	}
	down.SetReadLimit(protocol.MaxServerFrameBytes)
	up.SetReadLimit(protocol.MaxServerFrameBytes)
	relay := func(from, to *websocket.Conn, toClient bool) {
		defer cancel()
		for {
			typ, data, err := from.Read(ctx)
			at := time.Now()
			if err != nil {
				return
			}
			p.observe(toClient, data, at)
			if to.Write(ctx, typ, data) != nil {
				return
			}
		}
	}
	go relay(up, down, true)
	relay(down, up, false)
	up.CloseNow()
	down.CloseNow()
}

func (p *proxy) observe(toClient bool, data []byte, at time.Time) {
	if !strings.Contains(string(data), probe.Marker) {
		return
	}
	var f protocol.Frame
	if json.Unmarshal(data, &f) != nil {
		return
	}
	m, err := probe.ParseMessage(f.Body)
	if err != nil {
		return
	}
	key := fmt.Sprintf("%s/%d", m.Target, m.Seq)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !toClient && f.Type == protocol.TypeSend:
		if _, ok := p.sent[key]; !ok {
			p.sent[key] = at
		}
	case toClient && f.Type == protocol.TypeDeliver && !f.Sync:
		if s, ok := p.sent[key]; ok {
			if _, done := p.e2e[key]; !done {
				p.e2e[key] = at.Sub(s)
			}
		}
	}
}

func run(accounts, timed int, interval, timeout, warmup, duration time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, "-role", "cluster")
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); child.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		return fmt.Errorf("cluster: %q %v", line, err)
	}
	f := strings.Fields(line)
	gw, proxyURL, timingsURL := f[1], f[2], f[3]

	dir, _ := os.MkdirTemp("", "bench-probe-buf-")
	defer os.RemoveAll(dir)
	target := func(name, addr string, from, n int) probe.Target {
		t := probe.Target{Name: name, Protocol: probe.ProtoIMWatch, Address: addr, Secret: secret,
			Interval: config.Duration(interval), Timeout: config.Duration(timeout)}
		for i := from; i < from+n; i++ {
			t.Accounts = append(t.Accounts, probe.Account{User: fmt.Sprintf("bench-%d", i)})
		}
		return t
	}
	cfg := probe.Default()
	cfg.Location = "bench"
	cfg.Buffer = filepath.Join(dir, "buffer")
	cfg.BufferMaxSize = 64 << 20
	cfg.Targets = []probe.Target{target("direct", gw, 0, accounts-timed), target("timed", proxyURL, accounts-timed, timed)}

	var mu sync.Mutex
	measuring := false
	var ok, failed int
	var e2e []time.Duration
	prober := map[string]time.Duration{}
	reasons := map[string]int{}
	p, err := probe.New(cfg, probe.Options{Log: slog.New(slog.DiscardHandler), OnRound: func(r probe.RoundResult) {
		mu.Lock()
		defer mu.Unlock()
		if !measuring {
			return
		}
		if r.OK {
			ok++
			e2e = append(e2e, r.E2E)
			if r.Target == "timed" {
				prober[fmt.Sprintf("%s/%d", r.Target, r.Seq)] = r.E2E
			}
		} else {
			failed++
			reasons[r.Reason]++
		}
	}})
	if err != nil {
		return err
	}
	if err := p.Start(context.Background()); err != nil {
		return err
	}
	time.Sleep(warmup)
	mu.Lock()
	measuring = true
	mu.Unlock()
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer f.Close()
	}
	cpu0, wall0 := cpuTime(), time.Now()
	time.Sleep(duration)
	cpu1, wall1 := cpuTime(), time.Now()
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	mu.Lock()
	measuring = false
	rounds := ok + failed
	sort.Slice(e2e, func(i, j int) bool { return e2e[i] < e2e[j] })
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	p.Stop(ctx)
	cancel()

	var outside map[string]time.Duration
	resp, err := http.Get(timingsURL)
	if err != nil {
		return err
	}
	json.NewDecoder(resp.Body).Decode(&outside)
	resp.Body.Close()
	var diffs []time.Duration
	for k, pe := range prober {
		if oe, ok := outside[k]; ok {
			d := pe - oe
			if d < 0 {
				d = -d
			}
			diffs = append(diffs, d)
		}
	}
	sort.Slice(diffs, func(i, j int) bool { return diffs[i] < diffs[j] })

	cpu := cpu1 - cpu0
	wall := wall1.Sub(wall0)
	fmt.Printf("accounts %d (timed %d), interval %s, timeout %s, measured %s\n", accounts, timed, interval, timeout, wall.Round(time.Millisecond))
	fmt.Printf("rounds %d (%.0f/s, offered %.0f/s): ok %d, failed %d %v\n", rounds, float64(rounds)/wall.Seconds(),
		float64(accounts)/interval.Seconds(), ok, failed, reasons)
	fmt.Printf("prober CPU %.2f s = %.2f cores; %.1f us per round\n", cpu.Seconds(), cpu.Seconds()/wall.Seconds(), float64(cpu.Microseconds())/float64(max(rounds, 1)))
	fmt.Printf("e2e p50 %s p99 %s\n", pct(e2e, 0.50), pct(e2e, 0.99))
	fmt.Printf("timing error |prober - outside| over %d rounds: p50 %s p99 %s max %s\n", len(diffs), pct(diffs, 0.5), pct(diffs, 0.99), pct(diffs, 1))
	return nil
}

func pct(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(q * float64(len(s)-1))
	return s[i].Round(time.Microsecond)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
