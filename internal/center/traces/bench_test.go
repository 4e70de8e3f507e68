package traces

import (
	"log/slog"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func benchRequest(b *testing.B, msgs int) (*coltracepb.ExportTraceServiceRequest, []byte) {
	req := &coltracepb.ExportTraceServiceRequest{}
	for i := 0; i < msgs; i++ {
		req.ResourceSpans = append(req.ResourceSpans, messageTrace(i, time.Now().Add(-time.Minute)).ResourceSpans...)
	}
	body, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	return req, body
}

// BenchmarkReceivePath is the receiver's work per span before the store:
// decode the protobuf body, check every span, encode the records.
func BenchmarkReceivePath(b *testing.B) {
	_, body := benchRequest(b, 170) // 510 spans, about an SDK batch
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	spans := 0
	for b.Loop() {
		req, err := DecodeRequest(body, Protobuf)
		if err != nil {
			b.Fatal(err)
		}
		c, err := Convert(req, Limits{MaxSpans: 100000, MaxSpanSize: 1 << 20}, time.Now(), len(body))
		if err != nil {
			b.Fatal(err)
		}
		spans += len(c.Records)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(spans), "ns/span")
}

// BenchmarkDiskAppend is the store's work per span: WAL write (no fsync)
// and head insert; block writes happen in the background.
func BenchmarkDiskAppend(b *testing.B) {
	s, err := OpenDisk(DiskOptions{Dir: b.TempDir(), HeadMaxSpans: 1 << 30}, nil, discard())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var batches [][]Record
	for i := 0; i < 50; i++ {
		c, _ := Convert(messageTrace(i, time.Now()), Limits{}, time.Now(), 0)
		batches = append(batches, c.Records)
	}
	var all []Record
	for _, bt := range batches {
		all = append(all, bt...)
	}
	b.ReportAllocs()
	spans := 0
	for b.Loop() {
		if err := s.Append(all); err != nil {
			b.Fatal(err)
		}
		spans += len(all)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(spans), "ns/span")
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
