package agent

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/blockdevice"
)

// testLogger is quiet unless IMWATCH_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newEnv builds a collector environment over cfg's paths.
func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	proc, err := procfs.NewFS(cfg.ProcPath)
	if err != nil {
		t.Fatal(err)
	}
	block, err := blockdevice.NewFS(cfg.ProcPath, cfg.SysPath)
	if err != nil {
		t.Fatal(err)
	}
	return &env{cfg: cfg, proc: proc, block: block, log: testLogger()}
}
