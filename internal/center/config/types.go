package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/units"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written the Prometheus way: 30s, 5m, 1h30m, 15d, 2w.
type Duration time.Duration

// UnmarshalYAML reads a Prometheus duration.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a duration such as 30s, 5m or 15d")
	}
	if n.Value == "0" {
		*d = 0
		return nil
	}
	v, err := model.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("%q is not a duration: use e.g. 30s, 5m, 1h30m or 15d", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration the way it is read.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d Duration) String() string { return model.Duration(d).String() }

// D is the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size in bytes written with a unit: 512KB, 64MB, 10GB (powers of 1024).
type ByteSize int64

// UnmarshalYAML reads a size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a size such as 64MB or 10GB")
	}
	s := strings.TrimSpace(n.Value)
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		if v < 0 {
			return fmt.Errorf("%q: a size must not be negative", s)
		}
		*b = ByteSize(v)
		return nil
	}
	v, err := units.ParseBase2Bytes(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a size: use e.g. 512KB, 64MB or 10GB", s)
	}
	*b = ByteSize(v)
	return nil
}

// MarshalYAML writes the size the way it is read.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	return units.Base2Bytes(b).String()
}
