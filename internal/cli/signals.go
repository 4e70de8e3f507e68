package cli

import (
	"context"
	"os/signal"
	"syscall"
)

// catchStopSignals catches SIGINT and SIGTERM from the moment a command
// begins, so that one arriving during start-up, or just after the command
// said it is running, stops it cleanly instead of killing it by the default
// action with nothing flushed. The context ends on the first one; a start-up
// it cuts short is not a failure: the command stops as asked.
func catchStopSignals() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// stopReason names the signal that ended a context of catchStopSignals.
func stopReason(ctx context.Context) string {
	if err := context.Cause(ctx); err != nil {
		return err.Error()
	}
	return "none"
}
