// Command wsframe measures what the reference IM's transport costs on this
// machine, as the ceiling that docs/benchmarks.md derives from it: the CPU
// time of one WebSocket frame (coder/websocket, the gateway's library, over
// loopback TCP: written by one side and read by the other, text frames of
// -bytes bytes), of one NATS message through an embedded server on an
// in-process connection, and of one JetStream publish (stored in a file
// stream and acknowledged). Everything runs in this one process, so the CPU
// time it uses (getrusage, all threads) is the cost of both ends.
//
// The WebSocket and NATS measures are ping-pong: each of -conns pairs sends
// one frame and waits for the answer before the next, as a client's send
// waits for its send_ack, so every frame travels alone (one write and one
// read system call each, one wake-up of each side) the way they do in the
// IM at these rates.
//
//	go run ./bench/wsframe -conns 1,100,1000 -seconds 5
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	conns := flag.String("conns", "1,100,1000", "comma-separated numbers of concurrent ping-pong pairs")
	seconds := flag.Float64("seconds", 5, "how long each measure runs")
	size := flag.Int("bytes", 200, "frame and message payload size")
	modes := flag.String("modes", "ws,nats,natstcp,js", "what to measure: ws, nats (in-process), natstcp, js")
	flag.Parse()
	dur := time.Duration(*seconds * float64(time.Second))
	payload := []byte(strings.Repeat("x", *size))
	fmt.Printf("# wsframe: %d-byte payloads, %s per measure, GOMAXPROCS %d\n", *size, dur, runtime.GOMAXPROCS(0))
	fmt.Println("what\tpairs\tper second\tCPU us each\tper CPU-second")
	for _, mode := range strings.Split(*modes, ",") {
		for _, s := range strings.Split(*conns, ",") {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				log.Fatalf("-conns: %q is not a positive number", s)
			}
			var count int64
			var cpu time.Duration
			var what string
			switch mode {
			case "ws":
				what = "websocket frame"
				count, cpu = measureWS(n, dur, payload)
			case "nats":
				what = "nats message (in-process)"
				count, cpu = measureNATS(n, dur, payload, false, true)
			case "natstcp":
				what = "nats message (loopback TCP)"
				count, cpu = measureNATS(n, dur, payload, false, false)
			case "js":
				what = "jetstream publish+ack (file)"
				count, cpu = measureNATS(n, dur, payload, true, true)
			default:
				log.Fatalf("-modes: unknown %q", mode)
			}
			us := float64(cpu.Microseconds()) / float64(count)
			fmt.Printf("%s\t%d\t%.0f\t%.2f\t%.0f\n", what, n, float64(count)/dur.Seconds(), us, 1e6/us)
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureWS runs n client/server pairs; each client writes a frame, the
// server reads it and writes it back, the client reads it. It returns the
// frames carried (both directions) and the CPU time used.
func measureWS(n int, dur time.Duration, payload []byte) (int64, time.Duration) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			typ, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			if ws.Write(context.Background(), typ, data) != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	url := "ws://" + ln.Addr().String() + "/"
	clients := make([]*websocket.Conn, n)
	for i := range clients {
		ws, _, err := websocket.Dial(context.Background(), url, nil)
		if err != nil {
			log.Fatal(err)
		}
		clients[i] = ws
	}
	return pingPong(n, dur, func(i int) error {
		if err := clients[i].Write(context.Background(), websocket.MessageText, payload); err != nil {
			return err
		}
		_, _, err := clients[i].Read(context.Background())
		return err
	}, func() {
		for _, c := range clients {
			c.CloseNow()
		}
	})
}

// measureNATS runs n requesters against an embedded server: a request and
// its reply (two messages) through a responder, or with js a JetStream
// publish and its ack (counted as one).
func measureNATS(n int, dur time.Duration, payload []byte, js, inProcess bool) (int64, time.Duration) {
	dir, err := os.MkdirTemp("", "wsframe-nats")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		log.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats did not start")
	}
	defer srv.Shutdown()
	connect := func() *nats.Conn {
		opts := []nats.Option{}
		if inProcess {
			opts = append(opts, nats.InProcessServer(srv))
		}
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		if err != nil {
			log.Fatal(err)
		}
		return nc
	}
	nc := connect()
	defer nc.Close()
	if js {
		j, _ := jetstream.New(nc)
		if _, err := j.CreateStream(context.Background(), jetstream.StreamConfig{Name: "B", Subjects: []string{"b.>"}, Storage: jetstream.FileStorage}); err != nil {
			log.Fatal(err)
		}
		c, t := pingPong(n, dur, func(i int) error {
			_, err := j.Publish(context.Background(), "b."+strconv.Itoa(i), payload)
			return err
		}, func() {})
		return c / 2, t // pingPong counts two per round
	}
	resp := connect()
	defer resp.Close()
	if _, err := resp.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		log.Fatal(err)
	}
	_ = resp.Flush()
	return pingPong(n, dur, func(int) error {
		_, err := nc.Request("echo", payload, 5*time.Second)
		return err
	}, func() {})
}

// pingPong runs round on n goroutines for dur after a short warm-up and
// returns two counts per round (there and back) and the CPU time used.
func pingPong(n int, dur time.Duration, round func(i int) error, closeAll func()) (int64, time.Duration) {
	var count atomic.Int64
	var measuring atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := round(i); err != nil {
					return
				}
				if measuring.Load() {
					count.Add(2)
				}
			}
		}()
	}
	time.Sleep(dur / 5)
	c0 := cpuTime()
	measuring.Store(true)
	time.Sleep(dur)
	measuring.Store(false)
	c1 := cpuTime()
	close(stop)
	closeAll()
	wg.Wait()
	return count.Load(), c1 - c0
}
