package loadgen_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/loadgen"
)

func TestRunDeliversEveryMessageOnce(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var calls atomic.Int32
	var delivered atomic.Pointer[func() uint64]
	var atStart atomic.Uint64
	atStart.Store(1 << 63)
	rep, err := loadgen.Run(ctx, loadgen.Config{
		URLs: c.URLs(), Secret: imtest.Secret, Users: 20, Rate: 400, Duration: 2 * time.Second,
		Drain: 20 * time.Second, Log: imtest.Logger(),
		Sending: func(d func() uint64) { calls.Add(1); atStart.Store(d()); delivered.Store(&d) },
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("report: %+v", rep)
	// Sending: called once as the measured sending begins (the warm-up's
	// messages are not counted), its counter ends at the report's count.
	if calls.Load() != 1 || delivered.Load() == nil {
		t.Fatalf("Sending called %d times, want once", calls.Load())
	}
	if got := (*delivered.Load())(); atStart.Load() != 0 || got != rep.Delivered {
		t.Errorf("Sending's counter read %d at the start and %d at the end; want 0 and the report's %d", atStart.Load(), got, rep.Delivered)
	}
	if rep.Sent < 700 {
		t.Errorf("sent %d messages, want about 800", rep.Sent)
	}
	if rep.Errors != 0 || rep.Acked != rep.Sent {
		t.Errorf("sent %d, acked %d, errors %d %v: want every send acknowledged", rep.Sent, rep.Acked, rep.Errors, rep.ErrorsByCode)
	}
	if rep.Delivered != rep.Acked || rep.Lost != 0 || rep.Duplicates != 0 || rep.Misrouted != 0 {
		t.Errorf("acked %d, delivered %d, lost %d, duplicates %d, misrouted %d: want every acked message delivered once to its recipient",
			rep.Acked, rep.Delivered, rep.Lost, rep.Duplicates, rep.Misrouted)
	}
	if rep.E2EP50MS <= 0 || rep.E2EP99MS < rep.E2EP50MS || rep.AckP99MS <= 0 || rep.E2EMaxMS < rep.E2EP99MS {
		t.Errorf("latencies not measured sensibly: %+v", rep)
	}
	if rep.DeliveredPerSecond <= 0 || rep.ConnectSeconds <= 0 || rep.Gateways != 2 {
		t.Errorf("rates or connect time missing: %+v", rep)
	}
}

func TestRunIdleHoldsUsersConnected(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan loadgen.Report, 1)
	go func() {
		rep, err := loadgen.Run(ctx, loadgen.Config{URLs: c.URLs(), Secret: imtest.Secret, Users: 10, Duration: 2 * time.Second, Log: imtest.Logger()})
		if err != nil {
			t.Errorf("run: %v", err)
		}
		done <- rep
	}()
	imtest.Eventually(t, 30*time.Second, func() error {
		if n := c.Gateways[0].Conns() + c.Gateways[1].Conns(); n != 10 {
			return fmt.Errorf("%d connections, want 10", n)
		}
		if c.Gateways[0].Conns() == 0 || c.Gateways[1].Conns() == 0 {
			return fmt.Errorf("users not spread over both gateways: %d and %d", c.Gateways[0].Conns(), c.Gateways[1].Conns())
		}
		return nil
	})
	rep := <-done
	if rep.Sent != 0 || rep.Users != 10 {
		t.Errorf("idle run sent %d messages for %d users, want 0 for 10", rep.Sent, rep.Users)
	}
}

func TestConfigValidate(t *testing.T) {
	good := loadgen.Config{URLs: []string{"ws://127.0.0.1:1/ws"}, Secret: imtest.Secret, Users: 2, Rate: 10, Duration: time.Second}
	cases := []struct {
		name   string
		change func(*loadgen.Config)
		want   string // substring of the error; empty for valid
	}{
		{"valid", func(*loadgen.Config) {}, ""},
		{"no urls", func(c *loadgen.Config) { c.URLs = nil }, "gateway URL"},
		{"http url", func(c *loadgen.Config) { c.URLs = []string{"http://x/ws"} }, "want ws://"},
		{"short secret", func(c *loadgen.Config) { c.Secret = []byte("short") }, "16 bytes"},
		{"one user", func(c *loadgen.Config) { c.Users = 1 }, "users 1"},
		{"negative rate", func(c *loadgen.Config) { c.Rate = -1 }, "rate -1"},
		{"zero duration", func(c *loadgen.Config) { c.Duration = 0 }, "duration"},
		{"too many messages", func(c *loadgen.Config) { c.Rate = 1e6; c.Duration = time.Hour }, "over the limit"},
		{"bad run id", func(c *loadgen.Config) { c.RunID = "a.b" }, "run id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// BenchmarkDelivery runs the whole path in one process (embedded NATS, two
// gateways, a logic node and the load generator) for profiling:
//
//	go test -run '^$' -bench Delivery -benchtime 1x -cpuprofile cpu.out ./internal/im/loadgen
//
// IMWATCH_BENCH_USERS, IMWATCH_BENCH_RATE and IMWATCH_BENCH_DURATION change
// the load (defaults 1000 users, 5000 msg/s, 5s).
func BenchmarkDelivery(b *testing.B) {
	users := envInt(b, "IMWATCH_BENCH_USERS", 1000)
	rate := envInt(b, "IMWATCH_BENCH_RATE", 5000)
	dur, err := time.ParseDuration(envOr("IMWATCH_BENCH_DURATION", "5s"))
	if err != nil {
		b.Fatalf("IMWATCH_BENCH_DURATION: %v", err)
	}
	c := imtest.StartCluster(b, "", 2)
	for i := 0; i < b.N; i++ {
		rep, err := loadgen.Run(context.Background(), loadgen.Config{
			URLs: c.URLs(), Secret: imtest.Secret, Users: users, Rate: float64(rate), Duration: dur, Log: imtest.Logger(),
		})
		if err != nil {
			b.Fatalf("run: %v", err)
		}
		b.Logf("report: %+v", rep)
		b.ReportMetric(rep.DeliveredPerSecond, "delivered/s")
		b.ReportMetric(rep.E2EP99MS, "e2e-p99-ms")
		b.ReportMetric(rep.AckP99MS, "ack-p99-ms")
		b.ReportMetric(float64(rep.Lost), "lost")
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(b *testing.B, name string, def int) int {
	v, err := strconv.Atoi(envOr(name, strconv.Itoa(def)))
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return v
}
