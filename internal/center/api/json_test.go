package api

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
)

// FuzzAppendString checks the JSON string encoder against encoding/json,
// which Prometheus's API matches.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uo\te`, "<a&b>", "\x00\x1f\n\t", "é\u2028\u2029", "\xff\xfe", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func TestAppendValue(t *testing.T) {
	ls := labels.FromStrings("__name__", "up", "job", "a")
	type tc struct {
		v    promql.Vector
		want string
	}
	for _, c := range []tc{
		{promql.Vector{{T: 1435781451781, F: 1, Metric: ls}}, `[{"metric":{"__name__":"up","job":"a"},"value":[1435781451.781,"1"]}]`},
		{promql.Vector{{T: 1000, F: math.Inf(1), Metric: ls}}, `[{"metric":{"__name__":"up","job":"a"},"value":[1,"+Inf"]}]`},
		{promql.Vector{{T: -1500, F: math.NaN(), Metric: ls}}, `[{"metric":{"__name__":"up","job":"a"},"value":[-1.500,"NaN"]}]`},
		{promql.Vector{{T: 1005, F: 1e-7, Metric: ls}}, `[{"metric":{"__name__":"up","job":"a"},"value":[1.005,"1e-07"]}]`},
		{promql.Vector{{T: 1050, F: 1e21, Metric: ls}}, `[{"metric":{"__name__":"up","job":"a"},"value":[1.050,"1e+21"]}]`},
		{promql.Vector{}, `[]`},
	} {
		if got := string(appendValue(nil, c.v)); got != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
	if got := string(appendValue(nil, promql.Scalar{T: 1500, V: 0.25})); got != `[1.5,"0.25"]` {
		t.Errorf("scalar: %s", got)
	}
}
