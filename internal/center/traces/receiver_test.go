package traces

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// stuckStore holds every Append until released: a store too slow for its load.
type stuckStore struct {
	Store
	release chan struct{}
}

func (s *stuckStore) Append(recs []Record) error {
	<-s.release
	return s.Store.Append(recs)
}

// TestReceiverOverload: with the queue full, requests are refused with 503
// and Retry-After and counted; the ones queued before are stored.
func TestReceiverOverload(t *testing.T) {
	disk, err := OpenDisk(DiskOptions{Dir: t.TempDir()}, nil, imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	st := &stuckStore{Store: disk, release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	r := NewReceiver(st, ReceiverLimits{MaxBodySize: 1 << 20, MaxDecodedSize: 1 << 20, QueueSpans: 7, MaxConcurrent: 4}, nil, reg, imtest.Logger())
	post := func(i int) *httptest.ResponseRecorder {
		body, _ := proto.Marshal(messageTrace(i, time.Now().Add(-time.Minute)))
		req := httptest.NewRequest(http.MethodPost, "/v1/traces", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/x-protobuf")
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		return w
	}
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := 0; i < 2; i++ { // 3 spans each: 6 of 7 queued (one is in the writer's hands)
		wg.Add(1)
		go func() { defer wg.Done(); codes[i] = post(i).Code }()
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		if n := r.queued.Load(); n != 6 {
			return fmt.Errorf("queued %d", n)
		}
		return nil
	})
	w := post(2)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("full queue: %d %q", w.Code, w.Header().Get("Retry-After"))
	}
	if n := testutil.ToFloat64(r.m.refused.WithLabelValues("queue_full")); n != 3 {
		t.Errorf("refused spans counted: %v", n)
	}
	close(st.release)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Errorf("queued requests: %v", codes)
	}
	for i, want := range []int{3, 3, 0} {
		if recs, _ := disk.Trace(testTraceID(i)); len(recs) != want {
			t.Errorf("trace %d: %d spans, want %d", i, len(recs), want)
		}
	}
	r.Stop()
	if w := post(3); w.Code != http.StatusServiceUnavailable {
		t.Errorf("after Stop: %d", w.Code)
	}
}
