package cli

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/imwatch/imwatch/internal/center/centertest"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

func kv(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

type hop struct {
	service, instance, name string
	id, parent              string
	start, dur              time.Duration
	err                     string
}

// postHops sends the hops of one trace, one request per service instance.
func postHops(t *testing.T, base, traceID string, at time.Time, msgID string, hops []hop) {
	t.Helper()
	tid, _ := hex.DecodeString(traceID)
	for _, h := range hops {
		sid, _ := hex.DecodeString(h.id)
		var pid []byte
		if h.parent != "" {
			pid, _ = hex.DecodeString(h.parent)
		}
		sp := &tracepb.Span{TraceId: tid, SpanId: sid, ParentSpanId: pid, Name: h.name, Kind: tracepb.Span_SPAN_KIND_INTERNAL,
			StartTimeUnixNano: uint64(at.Add(h.start).UnixNano()), EndTimeUnixNano: uint64(at.Add(h.start + h.dur).UnixNano()),
			Attributes: []*commonpb.KeyValue{kv("messaging.message.id", msgID)}}
		if h.err != "" {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: h.err}
		}
		req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
			Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{kv("service.name", h.service), kv("service.instance.id", h.instance)}},
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{sp}}},
		}}}
		body, _ := proto.Marshal(req)
		if code, msg := centertest.PostOTLP(t, base, body, "application/x-protobuf"); code != 200 {
			t.Fatalf("post: %d %s", code, msg)
		}
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n%s", path, got)
	}
}

// TestTraceWaterfall: `imwatch trace MSGID` against a running center
// prints the message's traces: hops, services, instances, offsets,
// durations, errors, untraced gaps and missing parents.
func TestTraceWaterfall(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Traces.Retention = 0 // the spans are from a fixed day in the past
	c := centertest.Start(t, cfg)
	at := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	postHops(t, c.URL(), "4bf92f3577b34da6a3ce929d0e0e4736", at, "m-42", []hop{
		{"imwatch-client", "alice/phone", "im.client.send", "00f067aa0ba902b7", "", 0, 20 * time.Millisecond, ""},
		{"imwatch-gateway", "gw-1", "im.gateway.receive", "00f067aa0ba902b8", "00f067aa0ba902b7", 500 * time.Microsecond, time.Millisecond, ""},
		// The logic node is not traced: its time shows as a gap.
		{"imwatch-gateway", "gw-2", "im.gateway.push", "00f067aa0ba902b9", "00f067aa0ba902b8", 14 * time.Millisecond, time.Millisecond, ""},
		{"imwatch-client", "bob/laptop", "im.client.receive", "00f067aa0ba902ba", "00f067aa0ba902b9", 14500 * time.Microsecond, time.Millisecond, "decrypt failed"},
		{"imwatch-client", "bob/laptop", "im.client.ack", "00f067aa0ba902bb", "00f067aa0ba90200", 16 * time.Millisecond, time.Millisecond, ""},
	})
	postHops(t, c.URL(), "4bf92f3577b34da6a3ce929d0e0e4737", at.Add(time.Second), "m-42", []hop{
		{"imwatch-client", "alice/phone", "im.client.send", "00f067aa0ba902c0", "", 0, 3 * time.Millisecond, ""},
	})
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"trace-waterfall.golden", []string{"trace", "m-42", "--center", c.URL()}},
		{"trace-json.golden", []string{"trace", "--center", c.URL() + "/", "m-42", "--json"}},
	} {
		var out, errb bytes.Buffer
		if code := Main(tc.args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errb.String())
		}
		golden(t, tc.name, out.Bytes())
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"trace", "m-none", "--center", c.URL()}, 1, `no trace of message "m-none"`},
		{[]string{"trace"}, 2, "give the message id"},
		{[]string{"trace", "a", "b", "--center", c.URL()}, 2, `unexpected argument "b"`},
		{[]string{"trace", "a", "--center", "127.0.0.1:1"}, 2, "want the center's URL"},
		{[]string{"trace", "a", "--center", "http://127.0.0.1:1"}, 1, "is it running"},
	} {
		var out, errb bytes.Buffer
		if code := Main(tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.stderr) {
			t.Errorf("%v: exit %d %q, want %d with %q", tc.args, code, errb.String(), tc.code, tc.stderr)
		}
	}
}
