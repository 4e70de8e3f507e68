package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCancelledDialLeavesNoConnection cancels Dial while its TCP dial is
// still under way and lets the dial finish afterwards: the connection must
// be closed, not kept open and silent in an HTTP connection pool, where it
// would hold a gateway's graceful stop (http.Server.Shutdown waits for a
// connection that never sent its request).
func TestCancelledDialLeavesNoConnection(t *testing.T) {
	var mu sync.Mutex
	states := map[string]http.ConnState{}
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		states[c.RemoteAddr().String()] = st
	}
	srv.Start()
	defer srv.Close()

	dialing := make(chan struct{})
	release := make(chan struct{})
	cfg := Config{
		URLs:  []string{"ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"},
		Token: func() (string, error) { return "t", nil },
		dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(context.WithoutCancel(ctx), network, addr)
			close(dialing)
			<-release // the handshake gave up meanwhile
			return c, err
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		c, err := Dial(ctx, cfg)
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	<-dialing
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial = %v, want context.Canceled", err)
	}
	close(release)

	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		var open []string
		for addr, st := range states {
			if st != http.StateClosed {
				open = append(open, addr+" "+st.String())
			}
		}
		n := len(states)
		mu.Unlock()
		if n > 0 && len(open) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a cancelled dial the server still has connections open: %v (of %d)", open, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
