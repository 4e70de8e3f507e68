package traces

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

func strKV(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func testTraceID(i int) TraceID {
	var t TraceID
	binary.BigEndian.PutUint64(t[8:], uint64(i)+1)
	t[0] = byte(i * 37)
	return t
}

// messageTrace makes the spans of message i: a sender's send, the
// gateway's receive, the logic's handle (an error when i%5 == 0), each
// hop of service svc[k], all starting at base + i ms.
func messageTrace(i int, base time.Time) *coltracepb.ExportTraceServiceRequest {
	tid := testTraceID(i)
	names := []string{"im.client.send", "im.gateway.receive", "im.logic.handle"}
	services := []string{"imwatch-client", "imwatch-gateway", "imwatch-logic"}
	req := &coltracepb.ExportTraceServiceRequest{}
	start := base.Add(time.Duration(i) * time.Millisecond)
	for k := range names {
		sid := make([]byte, 8)
		binary.BigEndian.PutUint64(sid, uint64(i*10+k+1))
		sp := &tracepb.Span{
			TraceId: tid[:], SpanId: sid, Name: names[k],
			StartTimeUnixNano: uint64(start.Add(time.Duration(k) * time.Millisecond).UnixNano()),
			EndTimeUnixNano:   uint64(start.Add(time.Duration(k)*time.Millisecond + time.Duration(k+1)*time.Millisecond).UnixNano()),
			Attributes:        []*commonpb.KeyValue{strKV(AttrMessageID, fmt.Sprintf("msg-%d", i)), strKV(AttrUser, fmt.Sprintf("user-%d", i%7))},
		}
		if k > 0 {
			psid := make([]byte, 8)
			binary.BigEndian.PutUint64(psid, uint64(i*10+k))
			sp.ParentSpanId = psid
		}
		if k == 2 && i%5 == 0 {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "boom"}
		}
		req.ResourceSpans = append(req.ResourceSpans, &tracepb.ResourceSpans{
			Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strKV("service.name", services[k]), strKV("service.instance.id", fmt.Sprintf("%s-%d", services[k], i%2))}},
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{sp}}},
		})
	}
	return req
}

func records(t testing.TB, from, to int, base time.Time) []Record {
	t.Helper()
	var out []Record
	for i := from; i < to; i++ {
		c, err := Convert(messageTrace(i, base), Limits{}, time.Now(), 1024)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c.Records...)
	}
	return out
}

func openTest(t *testing.T, dir string, opts DiskOptions) *DiskStore {
	t.Helper()
	opts.Dir = dir
	s, err := OpenDisk(opts, nil, imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func yes() *bool { b := true; return &b }

// checkQueries runs the same questions against the store, whatever holds
// the spans (head, blocks, both, after a reopen).
func checkQueries(t *testing.T, s Store, n int, base time.Time) {
	t.Helper()
	for _, i := range []int{0, 1, n / 2, n - 1} {
		recs, err := s.Trace(testTraceID(i))
		if err != nil || len(recs) != 3 {
			t.Fatalf("trace %d: %d spans, %v", i, len(recs), err)
		}
		want := messageTrace(i, base)
		for _, r := range recs {
			found := false
			for _, rs := range want.ResourceSpans {
				sp := rs.ScopeSpans[0].Spans[0]
				if string(sp.SpanId) == string(r.SpanID[:]) {
					found = true
					if r.Name != sp.Name || r.Start != int64(sp.StartTimeUnixNano) || r.End != int64(sp.EndTimeUnixNano) ||
						r.Service != rs.Resource.Attributes[0].Value.GetStringValue() || r.MsgID != fmt.Sprintf("msg-%d", i) {
						t.Errorf("trace %d span %s: %+v", i, sp.Name, r)
					}
				}
			}
			if !found {
				t.Errorf("trace %d: span %s not sent", i, r.SpanID)
			}
		}
	}
	if recs, _ := s.Trace(testTraceID(n + 5)); len(recs) != 0 {
		t.Errorf("unknown trace: %d spans", len(recs))
	}
	ids := func(q Query) []int {
		refs, err := s.Search(q)
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, r := range refs {
			for i := 0; i < n; i++ {
				if testTraceID(i) == r.ID {
					out = append(out, i)
				}
			}
		}
		return out
	}
	last := func(k int, keep func(i int) bool) []int { // the newest k traces keep selects
		var out []int
		for i := n - 1; i >= 0 && len(out) < k; i-- {
			if keep(i) {
				out = append(out, i)
			}
		}
		return out
	}
	all := func(int) bool { return true }
	for _, tc := range []struct {
		name string
		q    Query
		want []int
	}{
		{"newest", Query{Limit: 5}, last(5, all)},
		{"msg id", Query{MsgID: fmt.Sprintf("msg-%d", n/3), Limit: 10}, []int{n / 3}},
		{"msg id unknown", Query{MsgID: "nope", Limit: 10}, nil},
		{"user", Query{User: "user-3", Limit: 4}, last(4, func(i int) bool { return i%7 == 3 })},
		{"user and msg", Query{User: "user-3", MsgID: "msg-3", Limit: 4}, []int{3}},
		{"user and other msg", Query{User: "user-3", MsgID: "msg-4", Limit: 4}, nil},
		{"error", Query{Error: yes(), Limit: 3}, last(3, func(i int) bool { return i%5 == 0 })},
		{"service+op+error", Query{Service: "imwatch-logic", Operation: "im.logic.handle", Error: yes(), Limit: 3}, last(3, func(i int) bool { return i%5 == 0 })},
		{"error on another service", Query{Service: "imwatch-client", Error: yes(), Limit: 3}, nil},
		{"unknown service", Query{Service: "nope", Limit: 3}, nil},
		{"min duration", Query{MinDuration: 3 * time.Millisecond, Limit: 2}, last(2, all)},
		{"min duration none", Query{MinDuration: 4 * time.Millisecond, Limit: 2}, nil},
		{"min duration of op", Query{Operation: "im.client.send", MinDuration: 2 * time.Millisecond, Limit: 2}, nil},
		// Trace i lasts from i to i+5 ms.
		{"time range", Query{Start: base.Add(10 * time.Millisecond), End: base.Add(12 * time.Millisecond), Limit: 20}, []int{5, 6, 7, 8, 9, 10, 11, 12}},
	} {
		got := ids(tc.q)
		if tc.name == "time range" { // traces spread over blocks: the order among them is not defined
			slices.Sort(got)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestDiskStore(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	const n = 300
	s := openTest(t, dir, DiskOptions{HeadMaxSpans: 1 << 20})
	// In three appends: spans of one trace in different appends too.
	recs := records(t, 0, n, base)
	for _, part := range [][]Record{recs[:100], recs[100:101], recs[101:]} {
		if err := s.Append(part); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("head", func(t *testing.T) { checkQueries(t, s, n, base) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened: the WAL is replayed, and the replayed head written into a block.
	s = openTest(t, dir, DiskOptions{HeadMaxSpans: 1 << 20})
	t.Run("replayed", func(t *testing.T) { checkQueries(t, s, n, base) })
	imtest.Eventually(t, 20*time.Second, func() error {
		if st := s.Stats(); st.Blocks != 1 || st.HeadSpans != 0 || st.BlockSpans != 3*n {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	t.Run("block", func(t *testing.T) { checkQueries(t, s, n, base) })
	s.Close()
	s = openTest(t, dir, DiskOptions{HeadMaxSpans: 1 << 20})
	defer s.Close()
	t.Run("block reopened", func(t *testing.T) { checkQueries(t, s, n, base) })
	if segs, _ := walSegments(filepath.Join(dir, "wal")); len(segs) != 1 {
		t.Errorf("wal segments left: %v", segs)
	}
}

// TestDiskStoreHeadCuts: a head cut at HeadMaxSpans, traces split over
// several blocks and the head, all answered as one.
func TestDiskStoreHeadCuts(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	const n = 200
	s := openTest(t, dir, DiskOptions{HeadMaxSpans: 100})
	defer s.Close()
	recs := records(t, 0, n, base)
	// First every send span, then every receive, then every handle: each
	// trace ends up in several blocks.
	for k := 0; k < 3; k++ {
		var part []Record
		for i := k; i < len(recs); i += 3 {
			part = append(part, recs[i])
		}
		for len(part) > 0 {
			m := min(len(part), 37)
			if err := s.Append(part[:m]); err != nil {
				t.Fatal(err)
			}
			part = part[m:]
		}
	}
	imtest.Eventually(t, 20*time.Second, func() error {
		if st := s.Stats(); st.Blocks < 5 || st.BlockSpans+st.HeadSpans != 3*n {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	checkQueries(t, s, n, base)
}

func TestDiskStoreRetention(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	s := openTest(t, dir, DiskOptions{HeadMaxSpans: 30})
	defer s.Close()
	if err := s.Append(records(t, 0, 10, now.Add(-5*time.Hour))); err != nil { // one old block
		t.Fatal(err)
	}
	for k := 0; k < 4; k++ {
		if err := s.Append(records(t, 10+10*k, 20+10*k, now.Add(-time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	imtest.Eventually(t, 20*time.Second, func() error {
		if st := s.Stats(); st.Blocks != 5 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	s.SetRetention(time.Hour, 0)
	s.applyRetention(now)
	if st := s.Stats(); st.Blocks != 4 {
		t.Fatalf("after retention: %+v", st)
	}
	if recs, _ := s.Trace(testTraceID(3)); len(recs) != 0 {
		t.Errorf("an expired trace is still there")
	}
	one := s.Stats().BlockBytes / 4
	s.SetRetention(time.Hour, 2*one+one/2)
	s.applyRetention(now)
	st := s.Stats()
	if st.Blocks != 2 || st.BlockBytes > 2*one+one/2 {
		t.Fatalf("after size retention: %+v", st)
	}
	if recs, _ := s.Trace(testTraceID(49)); len(recs) != 3 {
		t.Errorf("the newest trace is gone")
	}
	if recs, _ := s.Trace(testTraceID(15)); len(recs) != 0 {
		t.Errorf("the oldest block was kept over the size bound")
	}
}

// TestDiskStoreDamage: a torn WAL tail is cut off and the spans before it
// kept; an unreadable block is moved aside and the store opens.
func TestDiskStoreDamage(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Minute)
	s := openTest(t, dir, DiskOptions{})
	if err := s.Append(records(t, 0, 10, base)); err != nil {
		t.Fatal(err)
	}
	seg := s.wal.seg
	s.Close()
	f, err := os.OpenFile(segName(filepath.Join(dir, "wal"), seg), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, 5}) // a record cut short
	f.Close()
	s = openTest(t, dir, DiskOptions{})
	if recs, _ := s.Trace(testTraceID(9)); len(recs) != 3 {
		t.Fatalf("after a torn tail: %d spans", len(recs))
	}
	imtest.Eventually(t, 20*time.Second, func() error {
		if st := s.Stats(); st.Blocks != 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	if err := s.Append(records(t, 10, 20, base)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	blocks, _ := filepath.Glob(filepath.Join(dir, "blocks", "*.blk"))
	if len(blocks) != 1 {
		t.Fatalf("blocks %v", blocks)
	}
	data, _ := os.ReadFile(blocks[0])
	data[len(data)-footerSize-3] ^= 0xff // in the dictionary: the checksum no longer fits
	os.WriteFile(blocks[0], data, 0o644)
	s = openTest(t, dir, DiskOptions{})
	defer s.Close()
	if recs, _ := s.Trace(testTraceID(15)); len(recs) != 3 {
		t.Errorf("spans of the WAL after the bad block: %d", len(recs))
	}
	if _, err := os.Stat(blocks[0] + ".bad"); err != nil {
		t.Errorf("bad block not moved aside: %v", err)
	}
}
