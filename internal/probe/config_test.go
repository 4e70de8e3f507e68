package probe

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	"go.yaml.in/yaml/v3"
)

// example is the config of docs/probe.md (credentials beside it).
const example = `location: lab-1
center: {url: "http://127.0.0.1:7070", bearer_token_file: ""}
buffer: ./imwatch-data/probe-buffer
targets:
  - name: prosody
    protocol: xmpp
    address: "127.0.0.1:5222"
    accounts:
      - {user: "probe1@localhost", password_file: p1}
      - {user: "probe2@localhost", password_env: PROBE2_PASSWORD}
    interval: 5s
    timeout: 3s
  - name: mosquitto
    protocol: mqtt
    address: "127.0.0.1:1883"
  - name: local-im
    protocol: imwatch
    address: "ws://127.0.0.1:7080/ws"
    secret_file: ./imwatch-data/secret
`

func TestParseExampleAndDefaults(t *testing.T) {
	cfg, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Location != "lab-1" || len(cfg.Targets) != 3 || cfg.BufferMaxSize != DefaultBufferMaxSize {
		t.Errorf("cfg %+v", cfg)
	}
	m := cfg.Targets[1]
	if m.Interval.D() != DefaultInterval || m.Timeout.D() != DefaultTimeout || m.MQTTVersion != "5" || m.TopicPrefix != DefaultTopicPrefix {
		t.Errorf("mqtt defaults %+v", m)
	}
	if x := cfg.Targets[0]; len(x.SASLMechanisms) != 3 || !x.StartTLSOn() {
		t.Errorf("xmpp defaults %+v", x)
	}
}

func TestParseRefusesBadConfigsNamingTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", "location: a\ntargets:\n  - name: x\n    protocol: mqtt\n    address: h:1\n    intervall: 5s\n", []string{"config line 6", `unknown key "intervall"`, `did you mean "interval"`}},
		{"bad protocol", "targets:\n  - {name: x, protocol: smtp, address: 'h:1'}\n", []string{"line 2", "protocol", `"smtp"`, "imwatch, mqtt, xmpp"}},
		{"duplicate names", "targets:\n  - {name: x, protocol: mqtt, address: 'h:1'}\n  - {name: x, protocol: mqtt, address: 'h:2'}\n", []string{"line 3", "another target has that name"}},
		{"timeout too long", "targets:\n  - {name: x, protocol: mqtt, address: 'h:1', interval: 1s, timeout: 11s}\n", []string{"timeout", "at most 10 intervals"}},
		{"xmpp without accounts", "targets:\n  - {name: x, protocol: xmpp, address: 'h:5222'}\n", []string{"needs one or two accounts"}},
		{"xmpp account without password", "targets:\n  - {name: x, protocol: xmpp, address: 'h:5222', accounts: [{user: a@b}]}\n", []string{"password_file or password_env"}},
		{"imwatch without secret", "targets:\n  - {name: x, protocol: imwatch, address: 'ws://h:1/ws'}\n", []string{"secret_file or secret_env"}},
		{"imwatch bad url", "targets:\n  - {name: x, protocol: imwatch, address: 'h:1', secret_env: S}\n", []string{"WebSocket URL"}},
		{"bad mqtt version", "targets:\n  - {name: x, protocol: mqtt, address: 'h:1', mqtt_version: '4'}\n", []string{"mqtt_version"}},
		{"bad mechanism", "targets:\n  - {name: x, protocol: xmpp, address: 'h:1', sasl_mechanisms: [MD5], accounts: [{user: a@b, password_env: P}]}\n", []string{"sasl_mechanisms[0]", "MD5"}},
		{"bad center", "center: {url: 'ftp://x'}\n", []string{"center.url"}},
		{"bad location", "location: 'a b'\n", []string{"location"}},
		{"wrong type", "targets: 3\n", []string{"want a list"}},
		{"two documents", "location: a\n---\nlocation: b\n", []string{"second YAML document"}},
		{"small buffer", "buffer_max_size: 1KB\n", []string{"buffer_max_size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error without ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestLoadReadsCredentialsAndNeverShowsThem(t *testing.T) {
	const pw1, pw2, secret = "pw-file-S3cr3t!", "pw-env-S3cr3t!", "the-token-secret-0123456789"
	dir := t.TempDir()
	writeFile(t, dir, "p1", pw1+"\n")
	os.MkdirAll(filepath.Join(dir, "imwatch-data"), 0o700)
	writeFile(t, dir, "imwatch-data/secret", secret+"\n")
	path := writeFile(t, dir, "probe.yml", example)
	t.Setenv("PROBE2_PASSWORD", pw2)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Targets[0].Accounts[0].Password != pw1 || cfg.Targets[0].Accounts[1].Password != pw2 || string(cfg.Targets[2].Secret) != secret {
		t.Fatal("credentials not read")
	}
	if cfg.Buffer != filepath.Join(dir, "imwatch-data/probe-buffer") {
		t.Errorf("buffer %q not made relative to the config file", cfg.Buffer)
	}
	for _, s := range []string{"%v", "%+v", "%#v"} {
		noSecrets(t, "a formatted config ("+s+")", sprintf(s, cfg), pw1, pw2)
	}
	// Errors name the file or variable, never a credential: a password file
	// that is a directory, an empty one, an unset variable.
	os.Remove(filepath.Join(dir, "p1"))
	os.Mkdir(filepath.Join(dir, "p1"), 0o700)
	t.Setenv("PROBE2_PASSWORD", "")
	_, err = Load(path)
	if err == nil || !strings.Contains(err.Error(), "PROBE2_PASSWORD") || !strings.Contains(err.Error(), "p1") {
		t.Fatalf("error %v", err)
	}
	noSecrets(t, "the error", err.Error(), pw1, pw2, secret)
}

func TestReloadSwapsOrKeepsTheOldConfig(t *testing.T) {
	c := imtest.StartCluster(t, "", 1)
	dir := t.TempDir()
	writeFile(t, dir, "secret", string(imtest.Secret))
	good := func(names ...string) string {
		s := "location: reload\nbuffer: buf\ntargets:\n"
		for _, n := range names {
			s += "  - {name: " + n + ", protocol: imwatch, address: '" + c.URLs()[0] + "', secret_file: secret, interval: 200ms, timeout: 200ms}\n"
		}
		return s
	}
	path := writeFile(t, dir, "probe.yml", good("a"))
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p := startProber(t, cfg, Options{})
	h := p.Handler()
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", map[string]string{"target": "a"}, 2))
	runnerA := p.runners["a"]

	writeFile(t, dir, "probe.yml", good("a", "b"))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/-/reload", nil))
	if rec.Code != 200 {
		t.Fatalf("reload: %d %s", rec.Code, rec.Body)
	}
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", map[string]string{"target": "b"}, 2))
	if p.runners["a"] != runnerA {
		t.Error("an unchanged target was restarted by the reload")
	}

	writeFile(t, dir, "probe.yml", good("a", "b")+"bogus: 1\n")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/-/reload", nil))
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `unknown key "bogus"`) {
		t.Fatalf("bad reload: %d %s", rec.Code, rec.Body)
	}
	if got := p.Config(); len(got.Targets) != 2 {
		t.Errorf("the refused reload changed the config: %d targets", len(got.Targets))
	}
	before := metricValue(t, p, "probe_messages_received_total", map[string]string{"target": "b"})
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", map[string]string{"target": "b"}, before+2))

	writeFile(t, dir, "probe.yml", good("b"))
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, p, "probe_messages_sent_total", map[string]string{"target": "a"}); v != 0 {
		t.Errorf("the series of a removed target stay: %g", v)
	}
}

// FuzzParse feeds arbitrary bytes to the config decoder: never a panic,
// every error is ErrInvalid, and an accepted config validates and survives
// a round trip through YAML unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("targets:\n  - {name: x, protocol: mqtt, address: 'h:1', intervall: 1s}\n"))
	f.Add([]byte("targets:\n  - {name: x, protocol: xmpp, address: 'h:1', accounts: [{user: a@b, password_env: P}], starttls: false}\n"))
	f.Add([]byte("center: {url: 'http://x:1', traces: false, push_interval: 1m}\nbuffer_max_size: 1GB\n"))
	f.Add([]byte("a: &x {}\ncenter: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		out, err := yaml.Marshal(&cfg)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("round trip refused: %v\n%s", err, out)
		}
		out2, _ := yaml.Marshal(&again)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, out2)
		}
	})
}

// FuzzParseMessage: a probe body decodes only to what encodes back to it
// (up to unknown fields), never panics.
func FuzzParseMessage(f *testing.F) {
	f.Add(Message{Location: "l", Target: "t", Run: "r", Seq: 7, Sent: time.Unix(0, 1764000000123456789), Trace: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"}.Body())
	f.Add(Marker + " loc=a target=b run=c seq=1 sent=2 extra=3")
	f.Add(Marker + " seq=x")
	f.Add("hello")
	f.Fuzz(func(t *testing.T, body string) {
		m, err := ParseMessage(body)
		if err != nil {
			return
		}
		again, err := ParseMessage(m.Body())
		if err != nil || again != m {
			t.Fatalf("round trip of %q: %+v -> %+v (%v)", body, m, again, err)
		}
	})
}
