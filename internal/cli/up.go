package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/imwatch/imwatch/internal/agent"
	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/chatsim"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/probe"
	"github.com/imwatch/imwatch/rules"
	"github.com/nats-io/nats.go"
)

func runUp(args []string, stdout, stderr io.Writer) error {
	sig, stopSig := catchStopSignals()
	defer stopSig()
	fs := newFlags("up", "Runs everything on this machine with embedded defaults: NATS with JetStream,\ntwo gateways and a logic node of the reference IM.", stderr)
	var lf logFlags
	var sf secretFlags
	var tf tracingFlags
	lf.register(fs)
	sf.register(fs)
	tf.register(fs, true)
	data := fs.String("data", "./imwatch-data", "data directory")
	gwListen := fs.String("gateway-listen", "127.0.0.1:7080", "address of the first gateway; the second listens on the next port")
	natsURL := fs.String("nats", "", "URL of an external NATS with JetStream (default: embed one)")
	natsListen := fs.String("nats-listen", "127.0.0.1:4222", "loopback address of the embedded NATS server")
	listen := fs.String("listen", config.DefaultListen, "address of the monitoring center (Prometheus-compatible API)")
	agentListen := fs.String("agent-listen", agent.DefaultListen, "address of this host's system metrics (imwatch agent); empty: no agent")
	logicMetrics := fs.String("logic-metrics-listen", "127.0.0.1:7090", "address of the logic node's /metrics")
	users := fs.Int("users", 20, "simulated users chatting one-to-one and in groups (0: none)")
	rate := fs.Float64("rate", 5, "messages per second the simulated users send together")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *users == 1 || *users < 0 || *users > chatsim.MaxUsers {
		return usagef("--users %d: want 0 (none) or 2 to %d", *users, chatsim.MaxUsers)
	}
	if !(*rate >= 0 && *rate <= chatsim.MaxRate) {
		return usagef("--rate %g: want 0 to %d messages per second", *rate, chatsim.MaxRate)
	}
	began := time.Now()
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	secret, secretFrom, err := sf.load(*data, true)
	if err != nil {
		return err
	}
	gw2, err := cluster.NextPort(*gwListen, 1)
	if err != nil {
		return usageError{err}
	}
	// The parts send their spans to this center, which starts after them:
	// its address must be known first.
	if *listen, err = resolvePort(*listen); err != nil {
		return usageError{fmt.Errorf("--listen: %w", err)}
	}
	if !flagSet(fs, "tracing-endpoint") {
		tf.endpoint = "http://" + *listen + "/v1/traces"
	}
	tracing, err := tf.template()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		DataDir: *data, NATSURL: *natsURL, NATSListen: *natsListen,
		GatewayListen: []string{*gwListen, gw2}, LogicNodes: 1, Secret: secret, Log: log,
		Metrics: true, LogicMetricsListen: *logicMetrics, Tracing: tracing, Faults: true,
	})
	if err != nil {
		if sig.Err() != nil { // cluster.Start stopped what it had started
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return nil
		}
		return err
	}
	var as *agent.Server
	if *agentListen != "" {
		acfg := agent.DefaultConfig()
		acfg.Log = log
		a, err := agent.New(acfg)
		if err != nil {
			c.Stop(stopTimeout)
			return err
		}
		as = agent.NewServer(*agentListen, a)
		if err := as.Start(ctx); err != nil {
			c.Stop(stopTimeout)
			return fmt.Errorf("agent: %w", err)
		}
	}
	cen, faultConn, err := startUpCenter(ctx, *listen, *data, c, as, log)
	if err != nil {
		if as != nil {
			as.Stop(context.Background())
		}
		c.Stop(stopTimeout)
		if sig.Err() != nil {
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return nil
		}
		return err
	}
	probers, err := startUpProbers(ctx, *data, cen.URL(), c, secret, log)
	var sim *chatsim.Sim
	if err == nil && *users > 0 {
		sim, err = chatsim.Start(ctx, chatsim.Config{URLs: c.URLs(), Secret: secret, Users: *users, Rate: *rate, Log: log})
	}
	if err != nil {
		stopErr := stopUp(c, cen, faultConn, as, probers, nil)
		if sig.Err() != nil { // the probers or users were starting: a stop, not a failure
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return stopErr
		}
		return errors.Join(err, stopErr)
	}
	log.Info("imwatch up ready", "took", time.Since(began).Round(time.Millisecond))
	fmt.Fprintf(stdout, "imwatch is up.\n")
	fmt.Fprintf(stdout, "  center:    %s  (Prometheus API: %s/api/v1/query)\n", cen.URL(), cen.URL())
	fmt.Fprintf(stdout, "  traces:    OTLP/HTTP %s/v1/traces, queries %s/api/traces, imwatch trace MSGID\n", cen.URL(), cen.URL())
	if tracing != nil {
		fmt.Fprintf(stdout, "  tracing:   the IM's hops, %g of messages (probes, errors, slow ones always) to %s\n", tracing.Ratio, tracing.Endpoint)
	} else {
		fmt.Fprintf(stdout, "  tracing:   off (--tracing=false); probe rounds are still traced\n")
	}
	fmt.Fprintf(stdout, "  nats:      %s\n", c.NATSURL)
	for i, u := range c.URLs() {
		fmt.Fprintf(stdout, "  gateway %d: %s  (metrics http://%s/metrics)\n", i+1, u, c.Gateways[i].Addr())
	}
	for i, m := range c.LogicMetrics {
		fmt.Fprintf(stdout, "  logic %d:   metrics http://%s/metrics\n", i+1, m.Addr())
	}
	if as != nil {
		fmt.Fprintf(stdout, "  agent:     http://%s/metrics\n", as.Addr())
	}
	fmt.Fprintf(stdout, "  probes:    %d locations (up-gw-1, up-gw-2), every %s, results in the center\n", len(probers), upProbeInterval)
	if sim != nil {
		fmt.Fprintf(stdout, "  users:     %d simulated users chatting one-to-one and in groups, %g messages/s\n", *users, *rate)
	}
	fmt.Fprintf(stdout, "  secret:    %s\n  data:      %s\n", secretFrom, *data)
	printUpGuide(stdout, cen.URL(), *data)
	<-sig.Done()
	log.Info("stopping", "signal", stopReason(sig))
	return stopUp(c, cen, faultConn, as, probers, sim)
}

// stopUp stops what `imwatch up` started, after a signal or when a later
// part failed to start. The users and probers first, so that their last
// results reach the center; then the parts' spans are flushed while the
// center still takes them (a tracer left with spans for a center that is gone
// would spend its whole stop timeout retrying); then the center, which flushes
// its store, so that it does not scrape parts already stopped; the IM last.
func stopUp(c *cluster.Cluster, cen *center.Center, faultConn *nats.Conn, as *agent.Server, probers []*probe.Prober, sim *chatsim.Sim) error {
	if sim != nil {
		sim.Stop()
	}
	sctx, scancel := context.WithTimeout(context.Background(), stopTimeout)
	defer scancel()
	errs := []error{stopUpProbers(sctx, probers)}
	fctx, fcancel := context.WithTimeout(sctx, 2*time.Second)
	_ = c.FlushTracing(fctx)
	fcancel()
	errs = append(errs, cen.Stop(sctx))
	faultConn.Close()
	if as != nil {
		errs = append(errs, as.Stop(sctx))
	}
	errs = append(errs, c.Stop(stopTimeout))
	return errors.Join(errs...)
}

// resolvePort replaces port 0 of listen by a free port, so that the address
// is known before the listener opens.
func resolvePort(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return listen, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// flagSet reports whether the command line set flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// startUpCenter runs the center of `imwatch up`: its store under DATA/tsdb, the
// default rules installed under DATA/rules/default, and every part that up
// started as a scrape target.
//
// The center takes faults and hands them to the IM over NATS; the
// returned connection is the one it does that on, for the caller to close
// once the center stopped (Stop clears the faults through it).
func startUpCenter(ctx context.Context, listen, data string, c *cluster.Cluster, as *agent.Server, log *slog.Logger) (*center.Center, *nats.Conn, error) {
	ruleDir := filepath.Join(data, "rules", "default")
	if err := installRules(ruleDir); err != nil {
		return nil, nil, err
	}
	cfg := config.Default()
	cfg.Listen = listen
	cfg.Storage.Path = filepath.Join(data, "tsdb")
	cfg.RuleFiles = []string{filepath.Join(ruleDir, "*.yml"), filepath.Join(data, "rules", "*.yml")}
	// instance is the part's name (gw-1, logic-1), the name faults, spans
	// and the UI use for it too, rather than its address.
	for _, g := range c.Gateways {
		cfg.Scrape.Targets = append(cfg.Scrape.Targets, config.Target{URL: "http://" + g.Addr() + "/metrics", Labels: map[string]string{"job": "imwatch-gateway", "instance": g.ID()}})
	}
	for i, m := range c.LogicMetrics {
		cfg.Scrape.Targets = append(cfg.Scrape.Targets, config.Target{URL: "http://" + m.Addr() + "/metrics", Labels: map[string]string{"job": "imwatch-logic", "instance": fmt.Sprintf("logic-%d", i+1)}})
	}
	if as != nil {
		cfg.Scrape.Targets = append(cfg.Scrape.Targets, config.Target{URL: "http://" + as.Addr() + "/metrics", Labels: map[string]string{"job": "imwatch-agent"}})
	}
	cen, err := center.New(cfg, log)
	if err != nil {
		return nil, nil, fmt.Errorf("center: %w", err)
	}
	// Faults go to the IM parts over the bus, as they would to parts in
	// other processes (docs/protocol.md, Faults).
	nc, err := nats.Connect(c.NATSURL, nats.Name("imwatch center faults"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, nil, fmt.Errorf("center: faults: %w", err)
	}
	ctl, err := fault.NewNATSController(nc, log)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("center: %w", err)
	}
	cen.EnableFaults(ctl)
	if err := cen.Start(ctx); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("center: %w", err)
	}
	return cen, nc, nil
}

// installRules writes the default rule files, replacing older copies: the
// directory is imwatch's; a user's own rules go beside it in DATA/rules.
func installRules(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install rules: %w", err)
	}
	entries, err := fs.ReadDir(rules.FS, ".")
	if err != nil {
		return fmt.Errorf("install rules: %w", err)
	}
	for _, e := range entries {
		data, err := rules.FS.ReadFile(e.Name())
		if err != nil {
			return fmt.Errorf("install rules: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			return fmt.Errorf("install rules: %w", err)
		}
	}
	return nil
}

// printUpGuide tells a new user where to look and how to break the link.
func printUpGuide(w io.Writer, centerURL, data string) {
	fmt.Fprintf(w, `
Open %[1]s/ in a browser: the overview fills within about 10 s.
Break the link on purpose and watch imwatch find it (docs/faults.md):
  imwatch fault add drop --hop gateway.receive --instance gw-1 --duration 2m
  imwatch fault list                 # then: imwatch fault clear ID
The alert IMProbeRoundFailed fires within about 10 s (Alerts page); the failed
probe round links to its trace (Probes page).
Get a token with: imwatch im token --data %[2]s --user alice
Stop with Ctrl-C.
`, centerURL, data)
}
