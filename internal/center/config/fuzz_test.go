package config

import (
	"errors"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse feeds arbitrary bytes to the config decoder: it must never panic,
// every error must be ErrInvalid, and an accepted config must validate and
// survive a round trip through YAML unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("scrape:\n  interval: 5s\n  scrape_intervall: 3s\n"))
	f.Add([]byte("storage: {retention: 1w2d, retention_size: 512MiB}\n"))
	f.Add([]byte("remote_write:\n  - url: http://a:9/w\n    queue_capacity: 10\n"))
	f.Add([]byte("a: &x {}\nstorage: *x\n"))
	f.Add([]byte("scrape: {targets: [{url: 'http://x:1/m', labels: {a: 1}}]}"))
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
			t.Fatalf("round trip of an accepted config refused: %v\n%s", err, out)
		}
		out2, _ := yaml.Marshal(&again)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, out2)
		}
	})
}
