package cli_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/imwatch/imwatch/internal/cli"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func TestBenchJSON(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	urls := c.URLs()
	var stdout, stderr bytes.Buffer
	code := cli.Main([]string{"im", "bench", "--gateway", urls[0], "--gateway", urls[1], "--secret", string(imtest.Secret),
		"--users", "10", "--rate", "100", "--duration", "1s", "--json", "--log-level", "error"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, stderr.String())
	}
	dec := json.NewDecoder(bytes.NewReader(stdout.Bytes()))
	var rep map[string]any
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Fatalf("stdout has more than one JSON value:\n%s", stdout.String())
	}
	for _, f := range []string{"sent", "acked", "delivered", "duplicates", "lost", "errors", "delivered_per_second",
		"e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "ack_p50_ms", "ack_p99_ms", "connect_seconds", "rate_achieved", "users"} {
		if _, ok := rep[f]; !ok {
			t.Errorf("field %q missing from %s", f, stdout.String())
		}
	}
	num := func(f string) float64 {
		v, ok := rep[f].(float64)
		if !ok {
			t.Fatalf("field %q is %T, want a number", f, rep[f])
		}
		return v
	}
	if num("sent") < 90 || num("delivered") != num("acked") || num("lost") != 0 || num("duplicates") != 0 {
		t.Errorf("sent %v acked %v delivered %v lost %v duplicates %v: want every message delivered once",
			num("sent"), num("acked"), num("delivered"), num("lost"), num("duplicates"))
	}
	if num("e2e_p99_ms") <= 0 || num("users") != 10 {
		t.Errorf("e2e_p99_ms %v users %v", num("e2e_p99_ms"), num("users"))
	}
}

func TestBenchHumanReport(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	var stdout, stderr bytes.Buffer
	code := cli.Main([]string{"im", "bench", "--gateway", strings.Join(c.URLs(), ","), "--secret", string(imtest.Secret),
		"--users", "4", "--rate", "20", "--duration", "500ms", "--log-level", "error"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"4 users on 2 gateways", "lost 0, duplicates 0", "send-ack", "delivery    p50"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestBenchBadFlags(t *testing.T) {
	secret := string(imtest.Secret)
	cases := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"one user", []string{"--secret", secret, "--users", "1"}, 2, "--users 1: at least 2"},
		{"negative rate", []string{"--secret", secret, "--rate", "-5"}, 2, "--rate -5"},
		{"zero duration", []string{"--secret", secret, "--duration", "0s"}, 2, "--duration 0s"},
		{"not a duration", []string{"--secret", secret, "--duration", "ten"}, 2, "invalid value"},
		{"http gateway", []string{"--secret", secret, "--gateway", "http://127.0.0.1:7080/ws"}, 2, "want ws://"},
		{"short secret", []string{"--secret", "short"}, 2, "at least 16 characters"},
		{"no secret", []string{"--data", t.TempDir()}, 1, "give --secret or --secret-file"},
		{"unknown flag", []string{"--usres", "10"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"--secret", secret, "extra"}, 2, `unexpected argument "extra"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := cli.Main(append([]string{"im", "bench"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr.String(), tc.code, tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
		})
	}
}
