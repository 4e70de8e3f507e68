package fault

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeState(t *testing.T) {
	good, _ := json.Marshal(StateMsg{V: 1, LeaseMS: 5000, Faults: []Fault{{ID: "f1-1", Spec: Spec{Kind: KindDrop, Hop: HopGatewayPush, Instance: "gw-1", Percent: 10, Duration: Duration(time.Minute)}}}})
	if m, err := DecodeState(good); err != nil || len(m.Faults) != 1 || m.Faults[0].Percent != 10 {
		t.Fatalf("%+v %v", m, err)
	}
	cases := map[string]string{
		`{"v":2,"lease_ms":5000,"faults":[]}`:                                           "version 2",
		`{"v":1,"lease_ms":0,"faults":[]}`:                                              "lease_ms 0",
		`{"v":1,"lease_ms":5000,"faults":[],"x":1}`:                                     "unknown field",
		`{"v":1,"lease_ms":5000,"faults":[]} {}`:                                        "after the JSON",
		`{"v":1,"lease_ms":5000,"faults":[{"id":"a b"}]}`:                               "bad id",
		`{"v":1,"lease_ms":5000,"faults":[{"id":"a","kind":"boom","instance":"gw-1"}]}`: "kind",
		`[`: "bad fault control message",
	}
	for in, want := range cases {
		if _, err := DecodeState([]byte(in)); err == nil || !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", in, err, want)
		}
	}
	if _, err := DecodeState([]byte(`{"v":1,"pad":"` + strings.Repeat("x", MaxMessageBytes) + `"}`)); err == nil || !strings.Contains(err.Error(), "bytes, over") {
		t.Errorf("oversized: %v", err)
	}
}

func TestDecodeAgents(t *testing.T) {
	if m, err := DecodeAgents([]byte(`{"v":1,"instances":[{"name":"gw-1","service":"gateway","kinds":["drop","stop"],"applied":["f1-2"]}]}`)); err != nil || m.Instances[0].Name != "gw-1" {
		t.Fatalf("%+v %v", m, err)
	}
	for in, want := range map[string]string{
		`{"v":1,"instances":[{"name":"","service":"gateway"}]}`:                  "bad name",
		`{"v":1,"instances":[{"name":"x","service":"store"}]}`:                   "service",
		`{"v":1,"instances":[{"name":"x","service":"logic","kinds":["boom"]}]}`:  "kind",
		`{"v":1,"instances":[{"name":"x","service":"logic","applied":["a b"]}]}`: "bad fault id",
	} {
		if _, err := DecodeAgents([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", in, err, want)
		}
	}
}

// FuzzDecodeState: any bytes are refused with ErrMessage or give faults that
// pass their own validation and encode again.
func FuzzDecodeState(f *testing.F) {
	f.Add([]byte(`{"v":1,"lease_ms":5000,"faults":[{"id":"f1-1","kind":"drop","hop":"gateway.push","instance":"gw-1","percent":10,"duration":"1m","state":"active","start":"2026-12-01T00:00:00Z","until":"2026-12-01T00:01:00Z","applied":false}]}`))
	f.Add([]byte(`{"v":1,"lease_ms":1,"faults":[{"id":"x","kind":"latency","hop":"store.append","instance":"logic-1","delay":"2s"}]}`))
	f.Add([]byte(`{"v":1,"instances":[{"name":"gw-1","service":"gateway","kinds":["stop"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeState(data)
		if err != nil {
			if !errors.Is(err, ErrMessage) {
				t.Fatalf("error not ErrMessage: %v", err)
			}
		} else {
			for _, fl := range m.Faults {
				s := fl.Spec
				if err := s.Normalize(); err != nil {
					t.Fatalf("accepted fault fails Normalize: %v", err)
				}
			}
			if _, err := json.Marshal(m); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := DecodeAgents(data); err != nil && !errors.Is(err, ErrMessage) {
			t.Fatalf("agents error not ErrMessage: %v", err)
		}
	})
}
