// Command imwatch watches the message link of an instant-messaging system:
// system and application metrics, full-link traces and active probes, with a
// center that stores and alerts on them and a reference IM cluster to watch.
package main

import (
	"os"

	"github.com/imwatch/imwatch/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
