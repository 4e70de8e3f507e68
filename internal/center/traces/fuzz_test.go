package traces

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// FuzzDecodeOTLP: no body makes the OTLP decoding path panic, and what it
// accepts is valid and comes back the same from its stored form.
func FuzzDecodeOTLP(f *testing.F) {
	req := messageTrace(3, time.Unix(1_700_000_000, 0))
	b, _ := proto.Marshal(req)
	f.Add(b, false)
	f.Add([]byte(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}}]},"scopeSpans":[{"spans":[`+
		`{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2",`+
		`"links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175"}],"events":[{"timeUnixNano":"1","name":"e"}]}]}]}]}`), true)
	f.Add([]byte(`{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"zz"}]}]}]}`), true)
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00}, false)
	f.Fuzz(func(t *testing.T, body []byte, isJSON bool) {
		enc := Protobuf
		if isJSON {
			enc = JSON
		}
		req, err := DecodeRequest(body, enc)
		if err != nil {
			return
		}
		conv, err := Convert(req, Limits{MaxSpans: 1000, MaxSpanSize: 1 << 20}, time.Unix(1_700_000_000, 0), len(body))
		if err != nil {
			return
		}
		for _, r := range conv.Records {
			if r.TraceID == (TraceID{}) || r.SpanID.IsZero() || r.End < r.Start || r.Start == 0 || r.Name == "" {
				t.Fatalf("accepted an invalid span: %+v", r)
			}
			back, err := decodeRecord(r.Service, r.Instance, r.Span)
			if err != nil {
				t.Fatalf("stored span does not decode: %v", err)
			}
			if back.TraceID != r.TraceID || back.SpanID != r.SpanID || back.Parent != r.Parent || back.Name != r.Name ||
				back.Start != r.Start || back.End != r.End || back.MsgID != r.MsgID || back.Error != r.Error {
				t.Fatalf("stored span comes back different: %+v, was %+v", back, r)
			}
			if _, err := Assemble([]Record{back}, time.Second, time.Millisecond, time.Unix(1_700_000_100, 0)); err != nil {
				t.Fatalf("assemble: %v", err)
			}
		}
	})
}

// FuzzWALRecord: a damaged write-ahead log record is an error, never a panic.
func FuzzWALRecord(f *testing.F) {
	dir := f.TempDir()
	w, err := openSegment(dir, 0, false)
	if err != nil {
		f.Fatal(err)
	}
	c, _ := Convert(messageTrace(1, time.Unix(1_700_000_000, 0)), Limits{}, time.Unix(1_700_000_000, 0), 0)
	if err := w.write(c.Records); err != nil {
		f.Fatal(err)
	}
	w.close()
	seed, _ := os.ReadFile(segName(dir, 0))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, n, err := decodeWALRecord(b)
		if err == nil && (n > len(b) || len(recs) == 0 && n < walHeader) {
			t.Fatalf("decoded %d records from %d of %d bytes", len(recs), n, len(b))
		}
	})
}

// FuzzBlock: a damaged block file is refused or read, never a panic.
func FuzzBlock(f *testing.F) {
	dir := f.TempDir()
	h := newHead(0, nil)
	c, _ := Convert(messageTrace(1, time.Unix(1_700_000_000, 0)), Limits{}, time.Unix(1_700_000_000, 0), 0)
	h.add(c.Records)
	path := filepath.Join(dir, "seed.blk")
	if _, err := writeBlock(path, h); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "b.blk")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		b, err := openBlock(p)
		if err != nil {
			return
		}
		defer b.close()
		for ord := 0; ord < int(b.meta.nTraces) && ord < 100; ord++ {
			_, _ = b.trace(TraceID(b.traceID(ord)), nil)
		}
		yes := true
		b.search(&Query{Service: "imwatch-logic", Error: &yes, MsgID: "msg-1", Limit: 10}, newTop(10))
		b.search(&Query{MinDuration: 1, Limit: 10}, newTop(10))
	})
}
