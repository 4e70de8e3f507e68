// Command imwatch-pprof is imwatch with Go's profiling endpoints added, for
// the benchmarks under bench/: when IMWATCH_PPROF_LISTEN names a loopback
// address it serves /debug/pprof/ (CPU and heap profiles) and /debug/vars
// (runtime memory statistics) there; otherwise it is exactly `imwatch`.
// It is not part of the product: the profile endpoints stay out of the
// imwatch binary itself.
package main

import (
	_ "expvar" // /debug/vars
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // /debug/pprof/
	"os"

	"github.com/imwatch/imwatch/internal/cli"
)

func main() {
	if addr := os.Getenv("IMWATCH_PPROF_LISTEN"); addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			fmt.Fprintf(os.Stderr, "imwatch-pprof: IMWATCH_PPROF_LISTEN %q: want a loopback address such as 127.0.0.1:6060\n", addr)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "imwatch-pprof: %v\n", err)
			os.Exit(1)
		}
		go func() { _ = http.Serve(ln, nil) }()
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
