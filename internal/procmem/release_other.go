//go:build !linux

package procmem

// ReleaseStartupPages does nothing off Linux.
func ReleaseStartupPages() (Stats, error) { return Stats{}, nil }
