package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/loadgen"
)

// defaultBenchGateways are the gateways `imwatch up` starts by default.
var defaultBenchGateways = []string{"ws://127.0.0.1:7080/ws", "ws://127.0.0.1:7081/ws"}

// urlList is a repeatable flag whose values may also be comma-separated.
type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }

func (u *urlList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*u = append(*u, s)
		}
	}
	return nil
}

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("im bench", `Load-tests a running reference IM: USERS users connect (spread over the gateways),
each sends to the next in a ring at RATE messages/s in all for DURATION, and every
message's send-ack and delivery are timed and checked for loss and duplicates.
Exits 1 when an acknowledged message was lost or delivered twice.

Example: imwatch im bench --data ./imwatch-data --users 1000 --rate 2000 --duration 30s --json`, stderr)
	var gateways urlList
	var sf secretFlags
	var lf logFlags
	var tf tracingFlags
	tf.register(fs, false)
	fs.Var(&gateways, "gateway", "gateway WebSocket URL, repeatable or comma-separated (default "+strings.Join(defaultBenchGateways, ",")+")")
	sf.register(fs)
	lf.register(fs)
	data := fs.String("data", "./imwatch-data", "data directory holding the secret, when neither --secret nor --secret-file is given")
	users := fs.Int("users", 1000, "users connected, each with one device")
	rate := fs.Float64("rate", 1000, "messages per second of all users together; 0 only connects the users and holds them idle for --duration")
	duration := fs.Duration("duration", 10*time.Second, "how long to send")
	drain := fs.Duration("drain", loadgen.DefaultDrain, "after sending, how long to wait for outstanding deliveries before counting the rest as lost")
	inflight := fs.Int("max-inflight", 0, "sends awaiting their send-ack at once (default: half a second's worth, 64 to 10000)")
	dialConc := fs.Int("dial-concurrency", loadgen.DefaultDialConcurrency, "connections being set up at once")
	sendTimeout := fs.Duration("send-timeout", loadgen.DefaultSendTimeout, "a send not acknowledged in this time counts as an error")
	bodyBytes := fs.Int("body-bytes", loadgen.DefaultBodyBytes, "size of each message body")
	warmup := fs.Bool("warmup", true, "send one unmeasured message per user first, so that every conversation is loaded")
	runID := fs.String("run-id", "", "prefix of the user ids, unique per run (default: random)")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if len(gateways) == 0 {
		gateways = defaultBenchGateways
	}
	switch {
	case *users < 2:
		return usagef("--users %d: at least 2 (users chat in pairs)", *users)
	case *rate < 0:
		return usagef("--rate %g: messages per second, 0 or more", *rate)
	case *duration <= 0:
		return usagef("--duration %s: must be positive", *duration)
	case *drain < 0 || *sendTimeout < 0 || *inflight < 0 || *dialConc < 0 || *bodyBytes < 0:
		return usagef("--drain, --send-timeout, --max-inflight, --dial-concurrency and --body-bytes must not be negative")
	}
	secret, _, err := sf.load(*data, false)
	if err != nil {
		return err
	}
	tr, stopTracing, err := tf.tracer(cluster.ServiceClient, "im-bench")
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg := loadgen.Config{Tracer: tr,
		URLs: gateways, Secret: secret, Users: *users, Rate: *rate, Duration: *duration, Drain: *drain,
		MaxInflight: *inflight, DialConcurrency: *dialConc, SendTimeout: *sendTimeout, BodyBytes: *bodyBytes,
		SkipWarmup: !*warmup, RunID: *runID, Log: log,
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("im bench: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(stdout, rep)
	}
	switch {
	case rep.Lost > 0:
		return fmt.Errorf("im bench: %d acknowledged messages were not delivered within the drain of %s", rep.Lost, *drain)
	case rep.Duplicates > 0 || rep.Misrouted > 0:
		return fmt.Errorf("im bench: %d messages delivered twice, %d to the wrong user", rep.Duplicates, rep.Misrouted)
	}
	return nil
}

func printReport(w io.Writer, r loadgen.Report) {
	fmt.Fprintf(w, "imwatch im bench: %d users on %d gateways, %g msg/s for %gs (run %s)\n",
		r.Users, r.Gateways, r.TargetRate, r.DurationSeconds, r.RunID)
	fmt.Fprintf(w, "  connect     %d users in %.2fs (one user: p50 %.1f ms, p99 %.1f ms, max %.1f ms), %d reconnects\n",
		r.Users, r.ConnectSeconds, r.ConnectP50MS, r.ConnectP99MS, r.ConnectMaxMS, r.Reconnects)
	if r.TargetRate == 0 {
		fmt.Fprintf(w, "  idle        held for %gs, no messages sent\n", r.DurationSeconds)
	} else {
		achieved := "achieved"
		if !r.RateAchieved {
			achieved = "NOT achieved"
		}
		fmt.Fprintf(w, "  messages    sent %d, acked %d, delivered %d, lost %d, duplicates %d, errors %d\n",
			r.Sent, r.Acked, r.Delivered, r.Lost, r.Duplicates, r.Errors)
		if len(r.ErrorsByCode) > 0 {
			codes := make([]string, 0, len(r.ErrorsByCode))
			for c, n := range r.ErrorsByCode {
				codes = append(codes, fmt.Sprintf("%s %d", c, n))
			}
			sort.Strings(codes)
			fmt.Fprintf(w, "  errors      %s\n", strings.Join(codes, ", "))
		}
		fmt.Fprintf(w, "  throughput  sent %.0f/s, delivered %.0f/s: target %g/s %s (sending fell behind by at most %.1f ms)\n",
			r.SentPerSecond, r.DeliveredPerSecond, r.TargetRate, achieved, r.SendLagMaxMS)
		fmt.Fprintf(w, "  send-ack    p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.AckP50MS, r.AckP90MS, r.AckP99MS, r.AckMaxMS)
		fmt.Fprintf(w, "  delivery    p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (send to the recipient's application)\n",
			r.E2EP50MS, r.E2EP90MS, r.E2EP99MS, r.E2EMaxMS)
		if r.ViaSync > 0 || r.DeliveredUnacked > 0 || r.ClientDupsDrop > 0 {
			fmt.Fprintf(w, "  also        %d delivered by sync, %d delivered although their send failed, %d redeliveries absorbed by the clients\n",
				r.ViaSync, r.DeliveredUnacked, r.ClientDupsDrop)
		}
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "  warning     %s\n", warn)
	}
}
