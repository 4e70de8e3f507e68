package remotewrite

import (
	"bytes"
	"math"
	"testing"

	"github.com/prometheus/prometheus/prompb"
)

func sampleRequest() *prompb.WriteRequest {
	return &prompb.WriteRequest{
		Timeseries: []prompb.TimeSeries{
			{
				Labels:  []prompb.Label{{Name: "__name__", Value: "up"}, {Name: "job", Value: "agent"}},
				Samples: []prompb.Sample{{Value: 1, Timestamp: 1000}, {Value: 0, Timestamp: 2000}},
			},
			{
				Labels:    []prompb.Label{{Name: "__name__", Value: "x"}, {Name: "a", Value: "b"}},
				Samples:   []prompb.Sample{{Value: math.Inf(-1), Timestamp: -5}},
				Exemplars: []prompb.Exemplar{{Labels: []prompb.Label{{Name: "trace_id", Value: "1"}}, Value: 1, Timestamp: 3}},
			},
			{
				Labels:     []prompb.Label{{Name: "__name__", Value: "h"}},
				Histograms: []prompb.Histogram{{Count: &prompb.Histogram_CountInt{CountInt: 3}, Sum: 2, Schema: 1, Timestamp: 7}},
			},
		},
		Metadata: []prompb.MetricMetadata{{Type: prompb.MetricMetadata_COUNTER, MetricFamilyName: "x", Help: "h"}},
	}
}

// flat is a decoded request in comparable form.
type flat struct {
	labels  [][]string
	samples [][]prompb.Sample
	hists   []int
	ex      []int
}

func flatten(r *Request) flat {
	var f flat
	for _, s := range r.Series {
		var ls []string
		for _, l := range s.Labels {
			ls = append(ls, string(l.Name), string(l.Value))
		}
		f.labels = append(f.labels, ls)
		f.samples = append(f.samples, append([]prompb.Sample(nil), s.Samples...))
		f.hists = append(f.hists, len(s.Histograms))
		f.ex = append(f.ex, s.Exemplars)
	}
	return f
}

func flattenProto(w *prompb.WriteRequest) flat {
	var f flat
	for _, ts := range w.Timeseries {
		var ls []string
		for _, l := range ts.Labels {
			ls = append(ls, l.Name, l.Value)
		}
		f.labels = append(f.labels, ls)
		var ss []prompb.Sample
		for _, s := range ts.Samples {
			ss = append(ss, prompb.Sample{Value: s.Value, Timestamp: s.Timestamp})
		}
		f.samples = append(f.samples, ss)
		f.hists = append(f.hists, len(ts.Histograms))
		f.ex = append(f.ex, len(ts.Exemplars))
	}
	return f
}

func equalFlat(a, b flat) bool {
	if len(a.labels) != len(b.labels) {
		return false
	}
	for i := range a.labels {
		if len(a.labels[i]) != len(b.labels[i]) || len(a.samples[i]) != len(b.samples[i]) || a.hists[i] != b.hists[i] || a.ex[i] != b.ex[i] {
			return false
		}
		for j := range a.labels[i] {
			if a.labels[i][j] != b.labels[i][j] {
				return false
			}
		}
		for j := range a.samples[i] {
			x, y := a.samples[i][j], b.samples[i][j]
			if x.Timestamp != y.Timestamp || math.Float64bits(x.Value) != math.Float64bits(y.Value) {
				return false
			}
		}
	}
	return true
}

func TestDecodeMatchesProto(t *testing.T) {
	w := sampleRequest()
	b, err := w.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var r Request
	for round := 0; round < 2; round++ { // the second round reuses memory
		if err := r.Decode(b); err != nil {
			t.Fatal(err)
		}
		if !equalFlat(flatten(&r), flattenProto(w)) {
			t.Fatalf("round %d: decoded %+v, want %+v", round, flatten(&r), flattenProto(w))
		}
	}
	if n := r.NumSamples(); n != 4 {
		t.Errorf("NumSamples = %d, want 4", n)
	}
}

func TestDecodeKey(t *testing.T) {
	// The same label set gives the same key, another label set another key.
	mk := func(ls ...prompb.Label) []byte {
		w := &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{Labels: ls, Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}}}}
		b, _ := w.Marshal()
		var r Request
		if err := r.Decode(b); err != nil {
			t.Fatal(err)
		}
		return append([]byte(nil), r.Series[0].Key...)
	}
	a := mk(prompb.Label{Name: "__name__", Value: "up"}, prompb.Label{Name: "job", Value: "a"})
	a2 := mk(prompb.Label{Name: "__name__", Value: "up"}, prompb.Label{Name: "job", Value: "a"})
	b := mk(prompb.Label{Name: "__name__", Value: "up"}, prompb.Label{Name: "job", Value: "b"})
	if !bytes.Equal(a, a2) || bytes.Equal(a, b) || len(a) == 0 {
		t.Errorf("keys: %q %q %q", a, a2, b)
	}

	// Labels interleaved with samples still give a key covering all labels.
	ts := prompb.TimeSeries{Labels: []prompb.Label{{Name: "__name__", Value: "up"}}, Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}}
	one, _ := ts.Marshal()
	ts2 := prompb.TimeSeries{Labels: []prompb.Label{{Name: "job", Value: "a"}}}
	two, _ := ts2.Marshal()
	series := append(append([]byte(nil), one...), two...) // labels, sample, label
	w := appendField(nil, 1, series)
	var r Request
	if err := r.Decode(w); err != nil {
		t.Fatal(err)
	}
	if len(r.Series[0].Labels) != 2 || !bytes.Contains(r.Series[0].Key, []byte("job")) || !bytes.Contains(r.Series[0].Key, []byte("up")) {
		t.Errorf("interleaved: labels %d key %q", len(r.Series[0].Labels), r.Series[0].Key)
	}
}

func appendField(b []byte, num int, msg []byte) []byte {
	b = append(b, byte(num<<3|2))
	l := len(msg)
	for l >= 0x80 {
		b = append(b, byte(l)|0x80)
		l >>= 7
	}
	b = append(b, byte(l))
	return append(b, msg...)
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, in := range [][]byte{
		{0x0a},                   // field 1 without a length
		{0x0a, 0x05, 0x0a},       // length beyond the end
		{0x09, 1, 2, 3},          // field 1 with the wrong wire type
		{0x00},                   // field number 0
		{0x0c},                   // end group without a group
		{0x0a, 0x02, 0x12, 0x01}, // sample with a truncated body
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		var r Request
		if err := r.Decode(in); err == nil {
			t.Errorf("%x accepted", in)
		}
		var w prompb.WriteRequest
		if err := w.Unmarshal(in); err == nil {
			t.Errorf("%x accepted by prompb too: bad test input", in)
		}
	}
}

// FuzzDecode checks the decoder against prompb's generated Unmarshal: the
// same inputs are accepted, and they decode to the same series.
func FuzzDecode(f *testing.F) {
	b, _ := sampleRequest().Marshal()
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Add([]byte{0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 'a'})
	f.Add([]byte{0x1a, 0x00, 0x23, 0x24})
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Request
		err := r.Decode(in)
		var w prompb.WriteRequest
		perr := w.Unmarshal(in)
		if (err == nil) != (perr == nil) {
			t.Fatalf("decode error %v, prompb error %v", err, perr)
		}
		if err != nil {
			return
		}
		if !equalFlat(flatten(&r), flattenProto(&w)) {
			t.Fatalf("decoded %+v, prompb %+v", flatten(&r), flattenProto(&w))
		}
		// Reuse must give the same result.
		if err := r.Decode(in); err != nil || !equalFlat(flatten(&r), flattenProto(&w)) {
			t.Fatalf("second decode differs: %v", err)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	w := &prompb.WriteRequest{}
	for i := 0; i < 2000; i++ {
		w.Timeseries = append(w.Timeseries, prompb.TimeSeries{
			Labels: []prompb.Label{{Name: "__name__", Value: "node_cpu_seconds_total"}, {Name: "cpu", Value: "3"},
				{Name: "instance", Value: "host-17:9100"}, {Name: "job", Value: "node"}, {Name: "mode", Value: "idle"}},
			Samples: []prompb.Sample{{Value: float64(i), Timestamp: 1700000000000}},
		})
	}
	buf, _ := w.Marshal()
	b.Run("imwatch", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(buf)))
		var r Request
		for i := 0; i < b.N; i++ {
			if err := r.Decode(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prompb", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(buf)))
		for i := 0; i < b.N; i++ {
			var w prompb.WriteRequest
			if err := w.Unmarshal(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
