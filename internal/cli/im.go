package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/logic"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/internal/service"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

const stopTimeout = 15 * time.Second

// natsFlags choose the bus: an external NATS, or one embedded in this process.
type natsFlags struct {
	url    string
	listen string
	data   string
}

func (n *natsFlags) register(fs *flag.FlagSet, defaultListen string) {
	fs.StringVar(&n.url, "nats", "", "URL of an external NATS server or cluster with JetStream (default: embed one)")
	fs.StringVar(&n.listen, "nats-listen", defaultListen, "loopback address of the embedded NATS server, when --nats is not given")
	fs.StringVar(&n.data, "data", "./imwatch-data", "data directory (embedded NATS store, secret)")
}

// start returns the NATS URL to use, starting an embedded server into g if needed.
func (n *natsFlags) start(g *service.Group, log *slog.Logger) (string, error) {
	if n.url != "" {
		return n.url, nil
	}
	emb, err := bus.StartEmbedded(n.listen, n.data, log)
	if err != nil {
		return "", err
	}
	_ = g.Start(context.Background(), service.Func{N: "embedded nats", StopFn: func(context.Context) error { emb.Shutdown(); return nil }})
	return emb.URL(), nil
}

func runGateway(args []string, stdout, stderr io.Writer) error {
	sig, stopSig := catchStopSignals()
	defer stopSig()
	fs := newFlags("im gateway", "Runs a WebSocket gateway of the reference IM: clients connect to ws://LISTEN/ws.", stderr)
	var nf natsFlags
	var sf secretFlags
	var lf logFlags
	var tf tracingFlags
	nf.register(fs, "127.0.0.1:4222")
	sf.register(fs)
	lf.register(fs)
	tf.register(fs, true)
	listen := fs.String("listen", "127.0.0.1:7080", "address of the WebSocket endpoint /ws")
	id := fs.String("id", "", "gateway id, unique in the cluster (default: from --listen)")
	idle := fs.Duration("idle-timeout", 60*time.Second, "close a connection that sends nothing for this long")
	rateLimit := fs.Float64("rate", 200, "frames per second allowed per connection")
	metrics := fs.Bool("metrics", true, "serve the IM metric set on /metrics beside /ws")
	faults := fs.Bool("faults", false, "take faults from the center over NATS (docs/faults.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	secret, _, err := sf.load(nf.data, false)
	if err != nil {
		return err
	}
	if *id == "" {
		*id = gateway.IDFromListen(*listen)
	}
	if !protocol.ValidUser(*id) {
		return usagef("--id %q: use 1 to 64 characters of A-Z a-z 0-9 _ -", *id)
	}
	g := service.NewGroup(log)
	defer g.Stop(stopTimeout)
	url, err := nf.start(g, log)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(url, *id, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	tr, stopTracing, err := tf.tracer(cluster.ServiceGateway, *id)
	if err != nil {
		return err
	}
	defer stopTracing() // after the gateway stopped: its last spans are flushed
	cfg := gateway.DefaultConfig(*id, *listen, secret)
	cfg.Log, cfg.IdleTimeout, cfg.RateLimit, cfg.Tracer = log, *idle, *rateLimit, tr
	if *metrics {
		cfg.Metrics = immetrics.New("gateway")
		cfg.Metrics.Tracing(tr)
	}
	if _, err := gateway.New(cfg, nc); err != nil {
		return usageError{err}
	}
	// A part that a stop fault can stop and start again on its address.
	var gw *gateway.Gateway
	part := &service.Restartable{N: "gateway " + *id,
		New:     func() (service.Service, error) { return gateway.New(cfg, nc) },
		OnStart: func(s service.Service) { gw = s.(*gateway.Gateway); cfg.Listen = gw.Addr() }}
	if *faults {
		if cfg.Faults, err = startFaultAgent(g, nc, *id, faultService(true), part, cfg.Metrics, log); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	defer cancel()
	if err := g.Start(ctx, part); err != nil {
		if sig.Err() != nil {
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return g.Stop(stopTimeout)
		}
		return err
	}
	fmt.Fprintf(stdout, "gateway %s listening on ws://%s/ws (nats %s)\n", *id, gw.Addr(), url)
	<-sig.Done()
	log.Info("stopping", "signal", stopReason(sig))
	return g.Stop(stopTimeout)
}

func runLogic(args []string, stdout, stderr io.Writer) error {
	sig, stopSig := catchStopSignals()
	defer stopSig()
	fs := newFlags("im logic", "Runs a logic node of the reference IM. Start any number; they share the work.", stderr)
	var nf natsFlags
	var lf logFlags
	var tf tracingFlags
	nf.register(fs, "127.0.0.1:4222")
	lf.register(fs)
	tf.register(fs, true)
	node := fs.String("node", "logic-1", "node name, unique among logic nodes")
	ackTimeout := fs.Duration("ack-timeout", 2*time.Second, "push a message again when a device has not acknowledged it in this time")
	metricsListen := fs.String("metrics-listen", "127.0.0.1:7090", "address of the IM metric set's /metrics (empty: metrics off)")
	faults := fs.Bool("faults", false, "take faults from the center over NATS (docs/faults.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	g := service.NewGroup(log)
	defer g.Stop(stopTimeout)
	url, err := nf.start(g, log)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(url, *node, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	tr, stopTracing, err := tf.tracer(cluster.ServiceLogic, *node)
	if err != nil {
		return err
	}
	defer stopTracing() // after the node stopped: its last spans are flushed
	cfg := logic.DefaultConfig(*node)
	cfg.Log, cfg.AckTimeout, cfg.Tracer = log, *ackTimeout, tr
	var ms *service.HTTP
	if *metricsListen != "" {
		cfg.Metrics = immetrics.New("logic")
		cfg.Metrics.Tracing(tr)
		mux := http.NewServeMux()
		mux.Handle("/metrics", cfg.Metrics.Handler())
		ms = &service.HTTP{N: "logic metrics", Listen: *metricsListen, Handler: mux, Log: log}
		if err := g.Start(sig, ms); err != nil {
			return err
		}
	}
	if _, err := logic.New(cfg, nc); err != nil {
		return usageError{err}
	}
	part := &service.Restartable{N: "logic " + *node, New: func() (service.Service, error) { return logic.New(cfg, nc) }}
	if *faults {
		if cfg.Faults, err = startFaultAgent(g, nc, *node, faultService(false), part, cfg.Metrics, log); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	defer cancel()
	if err := g.Start(ctx, part); err != nil {
		if sig.Err() != nil {
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return g.Stop(stopTimeout)
		}
		return err
	}
	fmt.Fprintf(stdout, "logic node %s running (nats %s)\n", *node, url)
	if ms != nil {
		fmt.Fprintf(stdout, "metrics on http://%s/metrics\n", ms.Addr())
	}
	<-sig.Done()
	log.Info("stopping", "signal", stopReason(sig))
	return g.Stop(stopTimeout)
}

func faultService(gateway bool) string {
	if gateway {
		return fault.ServiceGateway
	}
	return fault.ServiceLogic
}

// startFaultAgent puts a fault agent for the one part of this process on
// the bus, in g before the part, so that it stops after the part.
func startFaultAgent(g *service.Group, nc *nats.Conn, name, svc string, part fault.Part, m *immetrics.Set, log *slog.Logger) (*fault.Injector, error) {
	agent := fault.NewAgent(nc, log)
	var reg prometheus.Registerer
	if m != nil { // with the service label the rest of the set carries
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"service": svc}, m.Registry)
	}
	inj := agent.Register(name, svc, part, reg)
	if err := agent.Start(); err != nil {
		return nil, err
	}
	return inj, g.Start(context.Background(), service.Func{N: "fault agent", StopFn: func(context.Context) error { agent.Stop(); return nil }})
}

func runToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("im token", "Prints an auth token for a user and device, signed with the cluster's secret.", stderr)
	var sf secretFlags
	sf.register(fs)
	data := fs.String("data", "./imwatch-data", "data directory holding the secret")
	user := fs.String("user", "", "user id (required)")
	device := fs.String("device", "cli", "device id")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *user == "" {
		return usagef("--user is required")
	}
	secret, _, err := sf.load(*data, false)
	if err != nil {
		return err
	}
	tok, err := protocol.NewToken(secret, *user, *device, *ttl)
	if err != nil {
		return usageError{err}
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
