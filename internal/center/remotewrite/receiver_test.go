package remotewrite

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/storage"
)

func openStore(t testing.TB) *storage.Store {
	t.Helper()
	cfg := config.Default().Storage
	cfg.Path = filepath.Join(t.TempDir(), "tsdb")
	s, err := storage.Open(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// FuzzReceiver sends arbitrary request bodies, compressed and not, through
// the whole receiver into a real tsdb: it must answer 204, 400 or 413 and
// never panic or fail with 500.
func FuzzReceiver(f *testing.F) {
	now := time.Now().UnixMilli()
	good, _ := (&prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{
		Labels:  []prompb.Label{{Name: "__name__", Value: "x"}, {Name: "a", Value: "b"}},
		Samples: []prompb.Sample{{Value: 1, Timestamp: now}, {Value: 2, Timestamp: now + 1000}},
	}}}).Marshal()
	f.Add(good, true)
	f.Add([]byte("garbage"), false)
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00}, true)
	store := openStore(f)
	lim := config.Default().Receiver
	lim.MaxBodySize, lim.MaxDecodedSize, lim.MaxSamplesPerWrite = 1<<16, 1<<18, 1000
	r := NewReceiver(store, store.Durable, lim, nil, slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, body []byte, compress bool) {
		if compress {
			body = snappy.Encode(nil, body)
		}
		req := httptest.NewRequest(http.MethodPost, "/api/v1/write", bytes.NewReader(body))
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		switch w.Code {
		case 204, 400, 413:
		default:
			msg, _ := io.ReadAll(w.Body)
			t.Fatalf("answer %d: %s", w.Code, msg)
		}
	})
}

func BenchmarkReceiver(b *testing.B) {
	store := openStore(b)
	r := NewReceiver(store, nil, config.Default().Receiver, nil, slog.New(slog.DiscardHandler))
	const series = 2000
	base := time.Now().Add(-time.Hour).UnixMilli()
	bodies := make([][]byte, 100)
	for i := range bodies {
		w := &prompb.WriteRequest{}
		for s := 0; s < series; s++ {
			w.Timeseries = append(w.Timeseries, prompb.TimeSeries{
				Labels: []prompb.Label{{Name: "__name__", Value: "node_cpu_seconds_total"}, {Name: "cpu", Value: string(rune('a' + s%16))},
					{Name: "instance", Value: "host-" + string(rune('a'+s/16%26)) + string(rune('a'+s/416)) + ":9100"}, {Name: "job", Value: "node"}, {Name: "mode", Value: "idle"}},
				Samples: []prompb.Sample{{Value: float64(i), Timestamp: base + int64(i)*1000}},
			})
		}
		raw, _ := w.Marshal()
		bodies[i] = snappy.Encode(nil, raw)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/write", bytes.NewReader(bodies[i%len(bodies)]))
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		if w.Code != 204 && i < len(bodies) {
			b.Fatalf("answer %d: %s", w.Code, w.Body)
		}
	}
	b.ReportMetric(float64(series*b.N)/b.Elapsed().Seconds(), "samples/s")
}
