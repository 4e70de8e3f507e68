package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"go.yaml.in/yaml/v3"
)

// DecodeStrict decodes one YAML document into out, a pointer to a struct
// already holding the defaults: an unknown key, a value of the wrong shape
// or a second document is an error naming its line, and a key left out
// keeps its default. It returns the line of every key path it saw, for
// WithLines. Every error wraps ErrInvalid. Other configs of imwatch (the
// prober's) decode with it so that all of them read the same way.
func DecodeStrict(data []byte, out any) (map[string]int, error) {
	lines := map[string]int{}
	if len(data) > MaxFileSize {
		return lines, fmt.Errorf("%w: config is %d bytes, more than the %d allowed", ErrInvalid, len(data), MaxFileSize)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return lines, fmt.Errorf("%w: %s", ErrInvalid, yamlError(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return lines, fmt.Errorf("%w: config line %d: a second YAML document; put everything in one", ErrInvalid, extra.Line)
	}
	if doc.Kind == 0 { // empty file: the defaults
		return lines, nil
	}
	if errs := check(&doc, reflect.TypeOf(out).Elem(), "", lines, 0); len(errs) > 0 {
		return lines, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	if err := doc.Decode(out); err != nil {
		return lines, fmt.Errorf("%w: %s", ErrInvalid, yamlError(err))
	}
	return lines, nil
}

// ReadFile reads a config file, at most MaxFileSize+1 bytes of it (Parse
// and DecodeStrict refuse what is longer).
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	return data, nil
}

// WithLines fills in the line of every FieldError in err (one error or a
// join of them) from lines, as DecodeStrict returned them, and returns err.
func WithLines(err error, lines map[string]int) error { return withLines(err, lines) }

// FieldErrorf makes a FieldError for the key at path.
func FieldErrorf(path, format string, args ...any) error { return fieldErr(path, format, args...) }
