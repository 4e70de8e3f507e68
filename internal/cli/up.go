package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/imwatch/imwatch/internal/agent"
	"github.com/imwatch/imwatch/internal/im/cluster"
)

func runUp(args []string, stdout, stderr io.Writer) error {
	sig, stopSig := catchStopSignals()
	defer stopSig()
	fs := newFlags("up", "Runs everything on this machine with embedded defaults: NATS with JetStream,\ntwo gateways and a logic node of the reference IM.", stderr)
	var lf logFlags
	var sf secretFlags
	lf.register(fs)
	sf.register(fs)
	data := fs.String("data", "./imwatch-data", "data directory")
	gwListen := fs.String("gateway-listen", "127.0.0.1:7080", "address of the first gateway; the second listens on the next port")
	natsURL := fs.String("nats", "", "URL of an external NATS with JetStream (default: embed one)")
	natsListen := fs.String("nats-listen", "127.0.0.1:4222", "loopback address of the embedded NATS server")
	_ = fs.String("listen", "127.0.0.1:7070", "address of the monitoring center")
	agentListen := fs.String("agent-listen", agent.DefaultListen, "address of this host's system metrics (imwatch agent); empty: no agent")
	logicMetrics := fs.String("logic-metrics-listen", "127.0.0.1:7090", "address of the logic node's /metrics")
	if err := parse(fs, args); err != nil {
		return err
	}
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
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		DataDir: *data, NATSURL: *natsURL, NATSListen: *natsListen,
		GatewayListen: []string{*gwListen, gw2}, LogicNodes: 1, Secret: secret, Log: log,
		Metrics: true, LogicMetricsListen: *logicMetrics,
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
		defer as.Stop(context.Background())
	}
	fmt.Fprintf(stdout, "imwatch is up.\n")
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
	fmt.Fprintf(stdout, "  secret:    %s\n  data:      %s\n", secretFrom, *data)
	fmt.Fprintf(stdout, "Get a token with: imwatch im token --data %s --user alice\nStop with Ctrl-C.\n", *data)
	<-sig.Done()
	log.Info("stopping", "signal", stopReason(sig))
	return c.Stop(stopTimeout)
}
