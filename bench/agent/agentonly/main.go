// Command agentonly serves imwatch agent's /metrics from a binary that
// links the agent package alone, none of imwatch's other parts. bench/agent
// runs it next to the real imwatch binary to tell the agent's own memory
// from what linking the rest of imwatch adds.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/imwatch/imwatch/internal/agent"
)

func main() {
	listen := flag.String("listen", agent.DefaultListen, "address to serve /metrics on")
	process := flag.Bool("process", true, "run the process collector")
	flag.Parse()
	cfg := agent.DefaultConfig()
	cfg.Enabled["process"] = *process
	a, err := agent.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentonly:", err)
		os.Exit(1)
	}
	s := agent.NewServer(*listen, a)
	if err := s.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "agentonly:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.Stop(sctx)
}
