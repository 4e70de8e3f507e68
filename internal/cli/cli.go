// Package cli is imwatch's command line: it parses the subcommand and its
// flags and hands over to the part that does the work.
package cli

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
)

// Version is set at build time with -ldflags "-X github.com/imwatch/imwatch/internal/cli.Version=...".
var Version = "dev"

const usage = `imwatch watches the message link of an instant-messaging system.

Usage:
  imwatch up [flags]              run everything on this machine with embedded defaults
  imwatch center [flags]          run the monitoring center (metrics store, rules, alerts, API)
  imwatch im gateway [flags]      run a WebSocket gateway of the reference IM
  imwatch im logic [flags]        run a logic node of the reference IM
  imwatch im bench [flags]        load-test a running IM: users chatting one-to-one
  imwatch im token [flags]        print an auth token for a user and device
  imwatch agent [flags]           serve this host's system metrics on /metrics
  imwatch trace MSGID [flags]     print a message's trace as a waterfall (from the center)
  imwatch probe --config FILE     probe IM links (imwatch, XMPP, MQTT) with probe accounts
  imwatch fault add|list|clear    inject faults into the IM through the center, list and clear them
  imwatch version                 print the version

Run 'imwatch COMMAND --help' for a command's flags.
`

// Main runs imwatch with args (without the program name) and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "up":
		err = runUp(args[1:], stdout, stderr)
	case "im":
		err = runIM(args[1:], stdout, stderr)
	case "center":
		err = runCenter(args[1:], stdout, stderr)
	case "agent":
		err = runAgent(args[1:], stdout, stderr)
	case "trace":
		err = runTrace(args[1:], stdout, stderr)
	case "probe":
		err = runProbe(args[1:], stdout, stderr)
	case "fault":
		err = runFault(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "imwatch %s\n", versionString())
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "imwatch: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "imwatch: %v\n", err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "imwatch: %v\n", err)
		return 1
	}
	return 0
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func runIM(args []string, stdout, stderr io.Writer) error {
	const imUsage = `Usage: imwatch im gateway|logic|bench|token [flags]`
	if len(args) == 0 {
		return usagef("%s", imUsage)
	}
	switch args[0] {
	case "gateway":
		return runGateway(args[1:], stdout, stderr)
	case "logic":
		return runLogic(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "token":
		return runToken(args[1:], stdout, stderr)
	}
	return usagef("unknown command %q\n%s", "im "+args[0], imUsage)
}

func versionString() string {
	v := Version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		v += " " + info.GoVersion
	}
	return v
}

// newFlags makes a flag set whose errors come back to Main instead of exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: imwatch %s\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

type logFlags struct{ level string }

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", l.level)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// secretFlags find the token secret: --secret, else --secret-file, else
// DATA/secret, made once with random bytes where allowed.
type secretFlags struct {
	secret string
	file   string
}

func (s *secretFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.secret, "secret", "", "token secret shared by gateways and token issuers (default: read from --secret-file)")
	fs.StringVar(&s.file, "secret-file", "", "file holding the token secret (default: DATA/secret, created if missing)")
}

func (s *secretFlags) load(dataDir string, create bool) ([]byte, string, error) {
	if s.secret != "" {
		if len(s.secret) < 16 {
			return nil, "", usagef("--secret must be at least 16 characters")
		}
		return []byte(s.secret), "--secret", nil
	}
	path := s.file
	if path == "" {
		path = filepath.Join(dataDir, "secret")
	}
	data, err := os.ReadFile(path)
	if err == nil {
		sec := strings.TrimSpace(string(data))
		if len(sec) < 16 {
			return nil, "", fmt.Errorf("secret file %s: the secret must be at least 16 characters", path)
		}
		return []byte(sec), path, nil
	}
	if !errors.Is(err, os.ErrNotExist) || !create || s.file != "" {
		return nil, "", fmt.Errorf("read secret: %w (give --secret or --secret-file)", err)
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return nil, "", fmt.Errorf("generate secret: %w", err)
	}
	sec := hex.EncodeToString(buf)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", fmt.Errorf("create data dir: %w", err)
	}
	if err := os.WriteFile(path, []byte(sec+"\n"), 0o600); err != nil {
		return nil, "", fmt.Errorf("write secret: %w", err)
	}
	return []byte(sec), path + " (new)", nil
}
